"""The minting service's pure model: serial numbers, the stamp's life cycle and stamp tokens."""
