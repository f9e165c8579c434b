"""Benchmarks that run against the real PostgreSQL and RabbitMQ on this machine."""
