"""Issuance throughput of the minting service beside the raw commit ceiling of this machine."""
