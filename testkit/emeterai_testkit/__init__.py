"""Test and benchmark fixtures shared by the services' test suites and ``bench/``."""
