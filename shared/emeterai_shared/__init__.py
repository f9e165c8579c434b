"""Shared kernel of the e-meterai platform.

Everything the four services have in common lives here once: settings, the PostgreSQL pool and
migration runner, versioned message contracts, RabbitMQ topology, the confirming publisher, the
consumer runtime with inbox/retries/parking, the transactional outbox and its relay, telemetry,
the HTTP application base and the command-line entry point every service uses.
"""
