"""The probe: a minimal service built only from the shared kernel.

It exists so the platform core can be tested and benchmarked end to end without any business
logic: ``POST /probe`` writes a ``platform.probe_sent.v1`` outbox row, and the worker's handler
records each application in ``probe_effects``. The message's ``note`` steers the handler:

* ``fail-until:N``: raise a transient error until delivery attempt N, then succeed;
* ``always-fail``: raise on every attempt (ends in the parking queue);
* ``permanent``: raise ``PermanentError`` (parks at once);
* ``forward``: also publish a follow-up probe (seq + 1_000_000) from inside the handler;
* ``sleep:MS``: await ``asyncio.sleep(MS / 1000)`` inside the handler (its transaction open)
  before recording the effect, so that shutdown tests can catch handlers in progress.

Run it like a service: ``python -m emeterai_testkit.probe worker``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import ClassVar

import asyncpg
from aiohttp import web
from emeterai_shared.config import ServiceSettings
from emeterai_shared.contracts.base import Message, message
from emeterai_shared.http import Operation, read_json, respond
from emeterai_shared.messaging import Envelope, PermanentError, Subscription
from emeterai_shared.runtime import Resources, Router, ServiceDefinition, main
from emeterai_shared.uow import UnitOfWork, unit_of_work
from pydantic import BaseModel

QUEUE = "probe.on_probe_sent"


@message("platform.probe_sent.v1")
class ProbeSent(Message):
    """Carries no business meaning: the kernel's own tests and benchmarks send it."""

    seq: int
    note: str = ""
    sent_at: datetime | None = None


class ProbeSettings(ServiceSettings):
    service_name: ClassVar[str] = "probe"
    default_http_port: ClassVar[int] = 8089


class TransientProbeError(RuntimeError):
    pass


async def on_probe_sent(uow: UnitOfWork, env: Envelope[ProbeSent]) -> None:
    note = env.body.note
    if note == "always-fail" or (note.startswith("fail-until:") and env.attempt < int(note[11:])):
        raise TransientProbeError(f"probe {env.body.seq} failing on attempt {env.attempt}")
    if note == "permanent":
        raise PermanentError(f"probe {env.body.seq} can never succeed")
    if note.startswith("sleep:"):
        await asyncio.sleep(int(note[6:]) / 1000)
    await uow.conn.execute(
        "INSERT INTO probe_effects (message_id, seq, attempt) VALUES ($1, $2, $3)",
        env.message_id, env.body.seq, env.attempt,
    )
    if note == "forward":
        uow.publish(ProbeSent(seq=env.body.seq + 1_000_000), correlation_id=env.correlation_id)


class ProbeRequest(BaseModel):
    seq: int
    note: str = ""


class ProbeAccepted(BaseModel):
    message_id: str


@dataclass(frozen=True)
class ProbeDeps:
    settings: ServiceSettings
    pool: asyncpg.Pool


async def dependencies(resources: Resources) -> ProbeDeps:
    return ProbeDeps(resources.settings, resources.pool)


async def post_probe(request: web.Request, deps: ProbeDeps) -> web.Response:
    body = await read_json(request, ProbeRequest)
    async with unit_of_work(deps.pool) as uow:
        mid = uow.publish(ProbeSent(seq=body.seq, note=body.note), correlation_id=str(body.seq))
    return respond(ProbeAccepted(message_id=str(mid)), status=202)


def routes(router: Router[ProbeDeps]) -> None:
    router.add(Operation("POST", "/probe", "Write one probe message to the outbox",
                         request=ProbeRequest, responses={202: ("accepted", ProbeAccepted),
                                                          400: ("malformed", None), 422: ("invalid", None)}),
               post_probe)


SUBSCRIPTIONS = (Subscription(QUEUE, ProbeSent, on_probe_sent),)

SERVICE = ServiceDefinition(
    "probe", "Probe service (platform self-test)", ProbeSettings, dependencies, routes, SUBSCRIPTIONS,
    migrations=Path(__file__).parent / "probe_migrations",
    platform_queues=(),  # outside the platform: its setup and relay declare only its own queue
)

if __name__ == "__main__":
    raise SystemExit(main(SERVICE))
