"""An order's issuance: exactly its quantity of serials, once, or a refund.

```
paid ──free stock, nobody waiting──────────────────────────────────────────► ISSUED
  ├───too little free stock (or older orders wait), a wait allowed──► WAITING ──its turn, stock there──► ISSUED
  │                                                                      └──refund_at passed, or an
  │                                                                         operator's refund──► FAILED
  └───too little free stock, no wait allowed (``stock_wait_s`` 0)──────────────────────────────► FAILED
```

An issuance is decided once (the ``issuances`` row is unique per order): ISSUED and FAILED are
final, so an order never gets both serials and a refund. Waiting orders are served oldest first,
each with its whole quantity; a younger order never overtakes an older one.
"""

from __future__ import annotations

from datetime import datetime, timedelta

OUT_OF_STOCK = "out of stock"
"""The reason of an issuance FAILED at once (no wait allowed)."""
WAIT_OVER = "out of stock until the refund deadline"
"""The reason of a waiting issuance FAILED at its ``refund_at``."""


def refund_deadline(now: datetime, stock_wait_s: float) -> datetime | None:
    """When an order that starts waiting for stock ``now`` is refunded; None: it may not wait."""
    return now + timedelta(seconds=stock_wait_s) if stock_wait_s > 0 else None

