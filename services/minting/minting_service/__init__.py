"""Minting service: serial issuance, stamp tokens and the stamp registry."""
