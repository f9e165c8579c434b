"""How the minting service is reached: HTTP routes, message subscriptions and commands."""
