"""The test kit: real-server fixtures and the pytest plugin (``fixtures``), the one platform
launcher (``platform``), the one applicant/buyer driver honouring ``Retry-After`` (``clients``),
the platform invariants written once (``invariants``), fault injection (``chaos``), test
documents (``documents``) and the probe service (``probe``). Used by the tests, ``make chaos``
and ``bench/``; nothing in the services or the kernel imports it."""
