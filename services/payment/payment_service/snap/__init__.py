"""SNAP (Standar Nasional Open API Pembayaran) protocol for virtual-account bank callbacks.

Pure code, no I/O: signatures and timestamps (`signatures`), response codes (`codes`), request
validation and response bodies (`models`), plus a bank simulator for tests and partner banks
(`banksim`, `banksim_cli`).
"""
