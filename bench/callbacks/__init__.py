"""Callback benchmark: signed SNAP payment callbacks/s the payment API accepts end to end.

``python -m bench.callbacks`` measures, in one run and with one load generator, a trivial aiohttp
JSON endpoint and the payment API capturing N pre-signed payment callbacks (token and signature
verified, payment captured, ``payment.captured.v1`` committed in the outbox; answer ``2002500``),
and reports callbacks/s as a ratio to the trivial rate (target ≥ 0.25).
"""
