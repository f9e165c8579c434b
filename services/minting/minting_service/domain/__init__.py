"""The minting service's pure model: serial numbers, the stamp's life cycle, issuances, stamp tokens and
the stamping certificate's key."""
