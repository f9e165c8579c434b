"""``make rush`` (``python -m bench.rush --buyers N``): a CASN registration rush against the platform.

- ``main``: the phases, the report (``bench/results/latest.json``) and the command line;
- ``applicants``: what applicants do (through the test kit's ``Client``/``Bank``, which honour
  ``Retry-After``);
- ``figures``: rates and latencies read from the services' databases (the invariants, ``lost``
  and ``duplicates``, are the test kit's: ``emeterai_testkit.invariants``);
- ``platform``: the platform found running or started by the test kit's launcher, its QRIS
  acquirer (a simulator the rush runs, which can be stopped for an outage), and its processes and
  metrics sampled.
"""
