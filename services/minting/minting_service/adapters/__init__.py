"""SQL and key files of the minting service."""
