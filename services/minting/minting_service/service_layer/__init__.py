"""Use cases of the minting service (issuance, the stamp registry, stock), each taking a unit of work,
and its message handlers (``handlers``)."""
