"""Order service: accounts, orders and the front door."""
