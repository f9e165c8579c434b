"""Messaging benchmark: raw commit and confirm ceilings beside the outbox pipeline rate.

``python -m bench.messaging [--messages N]`` measures, in one run on this machine:

1. single-row PostgreSQL commits/s (asyncpg, 8 connections, one INSERT per transaction);
2. confirmed persistent publishes/s (aio-pika, quorum queue, mandatory, ~500 in flight);
3. the probe service end to end (outbox → relay → broker → worker: inbox + handler in one
   transaction), relay and worker as real processes: once with N messages preloaded in the
   outbox, once "live" with 8 producers committing one message per transaction meanwhile.

The pipeline rates are reported as a ratio to the smaller raw ceiling, beside the CPU each
process spends per message (on two cores the pipeline is bound by their sum, not by either
ceiling); the figures go to the terminal and to ``bench/results/messaging.json``.
"""
