"""Use cases of the minting service: issuance, the stamp registry and stock."""
