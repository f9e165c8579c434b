"""Fault injection during a small rush: ``make chaos`` (``bench/chaos.py``) and ``tests/test_chaos.py``.

One run, on its own namespace (databases ``emeterai_<ns>_<svc>``, vhost ``emeterai_<ns>``, never
``make run``'s data):

1. the four services' api, worker and relay start as real processes (the test kit's launcher,
   ``platform.launched``), with one generated partner bank and minting stock for every applicant;
2. applicants arrive over ``arrival_s``: each registers, orders 2 stamps, the bank simulator pays
   the bill (a share of the callbacks are sent twice: a re-sent advice and an exact replay), then
   uploads 2 generated PDFs once the stamping quota shows the serials and waits until both are
   DONE or FAILED, through the test kit's ``clients.Client``: 429/503 are retried after
   ``Retry-After``; 5xx and lost connections (the faults) after a capped backoff, with the same
   idempotency keys (and, at the bank, the same ``paymentRequestId`` re-sent as an advice);
3. meanwhile, on a schedule and with a printed timeline, faults are injected: SIGKILL of one
   worker of every service (restarted at once), RabbitMQ stopped and started
   (``rabbitmqctl stop_app``/``start_app``), PostgreSQL stopped and started (``pg_ctlcluster``),
   and the stamping worker restarted with ``EMETERAI_FAILPOINTS=stamping.after_sign=kill`` so that
   it SIGKILLs itself between a signature and its commit (then restarted without it). A process
   that dies by itself is recorded and restarted, as a supervisor would;
4. after the load: quiescence (every outbox published, every queue of the vhost empty, no
   stamping job or order in flight, stable over a few polls);
5. checks, from the databases and the broker (not from the load's own counters): see
   ``emeterai_testkit.invariants.evaluate`` (the invariants the rush and the tests use too); plus
   ``front_doors`` from the answers the load got (no 5xx but 503, no 429/503 without
   ``Retry-After``). ``invariant`` checks fail the run; ``observation`` rows are reported.
   A captured payment whose only pending step is a parked message is lost (``stranding``), and
   does not hold quiescence up as "in transition".

On a cluster (``run(..., cluster=...)``, ``make chaos CLUSTER=1``) the run goes in segments, one per
fault of the schedule (``segment_plan``, ``_run_segments``): each segment's applicants arrive, its
fault is injected, and after quiescence the checks of step 5 run, before the next segment starts: the
invariants are checked after each fault, not once at the end.

Restarting RabbitMQ or PostgreSQL disturbs every other user of this machine's servers: callers hold
the exclusive broker lock (``fixtures.LOCK_FILE``; ``exclusive_servers`` here, the
``broker_exclusive`` fixture in tests), and ``ensure_servers_running`` always leaves both up.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg
from emeterai_shared.config import ServiceSettings
from emeterai_shared.failpoints import ENV as FAILPOINTS_ENV
from emeterai_shared.stranding import stranded

from emeterai_testkit import invariants
from emeterai_testkit.clients import Client, Refused, Stats
from emeterai_testkit.fixtures import (
    AMQP_BASE,
    LOCK_FILE,
    PG_BASE,
    broker_answers,
    require_restart_headroom,
    start_rabbitmq_node,
)
from emeterai_testkit.invariants import Check, counts, evaluate, queue_depths
from emeterai_testkit.platform import SERVICES, Log, Platform, Proc, launched, new_bank, platform_settings

if TYPE_CHECKING:
    from payment_service.adapters.banksim import FlagAdvise

    from emeterai_testkit.cluster import Cluster

Depths = Callable[[str], Any]
"""``vhost -> {queue: messages}`` (awaitable): the machine's broker's (``queue_depths``) or a cluster's."""

__all__ = ["Check", "counts", "evaluate", "queue_depths"]

WORKER_KILLS = "worker_kills"
RABBITMQ_RESTART = "rabbitmq_restart"
POSTGRESQL_RESTART = "postgresql_restart"
STAMPING_KILL_AFTER_SIGN = "stamping_kill_after_sign"
CLUSTER_NODE_KILL = "cluster_node_kill"
CLUSTER_PARTITION = "cluster_partition"
CLUSTER_ROLLING_RESTART = "cluster_rolling_restart"
CLUSTER_SCHEDULE = ((0.15, CLUSTER_NODE_KILL), (0.45, CLUSTER_PARTITION), (0.75, CLUSTER_ROLLING_RESTART))
"""``make chaos CLUSTER=1``: the faults of a three-node cluster (``emeterai_testkit.cluster``)."""
INJECTIONS = {
    WORKER_KILLS: "SIGKILL one worker of every service, restart it",
    RABBITMQ_RESTART: "RabbitMQ stop_app, down a few seconds, start_app",
    POSTGRESQL_RESTART: "PostgreSQL stopped (fast), down a few seconds, started",
    STAMPING_KILL_AFTER_SIGN: "stamping worker SIGKILLs itself after signing, before its commit",
    CLUSTER_NODE_KILL: "SIGKILL of the cluster node most clients use, down a few seconds, started again",
    CLUSTER_PARTITION: "the cluster node most clients use partitioned away, then healed",
    CLUSTER_ROLLING_RESTART: "rolling restart of the three cluster nodes (rabbitmqctl stop, start, one by one)",
}
CLUSTER_INJECTIONS = (CLUSTER_NODE_KILL, CLUSTER_PARTITION, CLUSTER_ROLLING_RESTART)
TRANSITIONAL_ORDER_STATES = ("PAID", "REFUND_PENDING")
SNAP_PAID = "2002500"
SNAP_DUPLICATE_EXTERNAL_ID = "4042518"



def _default_retry_delays() -> list[int]:
    """The services' own default delay tiers (``ServiceSettings.retry_delays_ms``)."""
    delays: list[int] = ServiceSettings.model_fields["retry_delays_ms"].get_default(call_default_factory=True)
    return list(delays)


START_TIMEOUT_S = 180.0
"""Starting processes on a loaded 2-core machine can take longer than ``Platform.start``'s minute."""


@dataclass
class ChaosConfig:
    namespace: str
    applicants: int = 200
    arrival_s: float = 60.0
    """Applicants arrive evenly over this many seconds; the faults are injected in this window."""
    schedule: tuple[tuple[float, str], ...] = (
        (0.15, WORKER_KILLS), (0.35, RABBITMQ_RESTART), (0.6, POSTGRESQL_RESTART), (0.85, STAMPING_KILL_AFTER_SIGN))
    """(fraction of ``arrival_s``, injection): each starts then, or when the previous one recovered."""
    broker_down_s: float = 5.0
    postgres_down_s: float = 5.0
    duplicate_share: float = 0.2
    """Share of paid bills whose callback is sent again (half a re-sent advice, half an exact replay)."""
    retry_delays_ms: list[int] = field(default_factory=lambda: _default_retry_delays())
    applicant_timeout_s: float = 300.0
    quiesce_timeout_s: float = 240.0
    failpoint_wait_s: float = 45.0
    """How long the stamping worker runs with the failpoint waiting for a job to sign."""
    recovery_timeout_s: float = 120.0
    stamps_per_applicant: int = 2
    documents_per_applicant: int = 2
    poll_interval_s: float = 1.0
    cluster_down_s: float = 5.0
    """How long a SIGKILLed cluster node stays down."""
    partition_s: float = 25.0
    """How long a partitioned node stays cut off (longer than the nodes' net_ticktime of 10 s, so
    its peers see it gone)."""
    amqp_heartbeat_s: int = 0
    """The services' AMQP heartbeat (0: their default); a cluster run uses a short one, so that a client
    of a partitioned node notices within seconds and moves to the next address."""

    @property
    def vhost(self) -> str:
        return f"emeterai_{self.namespace}"

    def database(self, service: str) -> str:
        return f"emeterai_{self.namespace}_{service}"


# --- the servers: lock, restarts, always left running -------------------------------------------------------


def _run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def require_tools() -> None:
    missing = [t for t in ("rabbitmqctl", "pg_ctlcluster", "pg_lsclusters") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"fault injection needs {', '.join(missing)} (the real servers on this machine)")


def postgres_cluster() -> tuple[str, str]:
    """(version, name) of the local cluster: the newest version under /etc/postgresql, ``main``."""
    versions = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".") if p.isdigit()])
    if not versions:
        raise RuntimeError("no PostgreSQL cluster under /etc/postgresql")
    return versions[-1], "main"


def _pg_ctl(action: str) -> subprocess.CompletedProcess[str]:
    version, name = postgres_cluster()
    return _run(["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action])


def postgres_online() -> bool:
    version, name = postgres_cluster()
    out = _run(["pg_lsclusters", "--no-header"]).stdout
    return any(line.split()[:2] == [version, name] and "online" in line.split() for line in out.splitlines())


def rabbitmq_running() -> bool:
    # status answers while the node runs even with the app stopped: ask the app itself
    return _run(["rabbitmqctl", "-q", "list_vhosts"], timeout=60).returncode == 0


async def wait_postgres(timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            conn = await asyncpg.connect(f"{PG_BASE}/postgres", timeout=5)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            last = exc
            await asyncio.sleep(0.3)
            continue
        await conn.close()
        return
    raise RuntimeError(f"PostgreSQL did not come back within {timeout_s}s: {last!r}")


async def wait_rabbitmq(timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = await asyncio.to_thread(_run, ["rabbitmqctl", "await_startup", "--timeout", "30"], 60)
        if done.returncode == 0 and await asyncio.to_thread(rabbitmq_running) \
                and await asyncio.to_thread(broker_answers):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"RabbitMQ did not come back within {timeout_s}s")


def ensure_servers_running(log: Log = print) -> dict[str, bool]:
    """Start PostgreSQL and RabbitMQ's app if they are not running; what was found, what was done."""
    found = {"postgresql": postgres_online(), "rabbitmq": rabbitmq_running()}
    if not found["postgresql"]:
        log(f"postgresql was not running: starting it ({_pg_ctl('start').returncode})")
    if not found["rabbitmq"]:
        start_rabbitmq_node()  # the node itself, if it is down (rabbitmq-server -detached)
        log(f"rabbitmq app was not running: start_app ({_run(['rabbitmqctl', 'start_app']).returncode})")
        _run(["rabbitmqctl", "await_startup", "--timeout", "120"], 150)
    return {"postgresql": postgres_online(), "rabbitmq": rabbitmq_running()}


@contextlib.contextmanager
def exclusive_servers(wait_s: float = 900, log: Log = print) -> Iterator[None]:
    """The exclusive broker lock every test session and benchmark respects (they hold it shared
    while they run), held for RabbitMQ and PostgreSQL restarts alike; both servers are running
    again when it is released."""
    fd = os.open(LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        deadline = time.monotonic() + wait_s
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{LOCK_FILE} is held by other sessions after {wait_s:.0f}s") from None
                if not said:
                    log(f"waiting for the exclusive server lock ({LOCK_FILE}): other sessions use the servers")
                    said = True
                time.sleep(1)
        try:
            yield
        finally:
            ensure_servers_running(log)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# --- the platform ------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def chaos_platform(cfg: ChaosConfig, workdir: Path, *, amqp_url: str | None = None,
                         log: Log = print) -> AsyncIterator[Platform]:
    """The four services on fresh databases of ``cfg.namespace`` and its vhost (which the caller
    made fresh), with a generated bank and stock for every applicant; stopped on exit. ``amqp_url``:
    one broker, or several comma-separated (a cluster's nodes: ``amqp_urls``, first one ``amqp_url``)."""
    bank = new_bank(workdir)
    url = amqp_url or f"{AMQP_BASE}/{cfg.vhost}"
    common: dict[str, Any] = {"amqp_url": url.split(",")[0], "retry_delays_ms": list(cfg.retry_delays_ms)}
    if "," in url:
        common["amqp_urls"] = url
    if cfg.amqp_heartbeat_s:
        common["amqp_heartbeat_s"] = cfg.amqp_heartbeat_s
    services = platform_settings(SERVICES, workdir, common=common,
        overrides={svc: {"database_name": cfg.database(svc)} for svc in SERVICES})
    stock = cfg.applicants * cfg.stamps_per_applicant + 50
    async with launched(services, workdir, bank=bank, start_timeout_s=START_TIMEOUT_S, stock=stock,
                        log=lambda m: log(f"{m} on namespace {cfg.namespace}")) as p:
        yield p


# --- timeline and supervision ------------------------------------------------------------------------------


@dataclass
class Timeline:
    log: Log
    t0: float = field(default_factory=time.monotonic)
    events: list[dict[str, Any]] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def note(self, event: str, **detail: Any) -> None:
        t = self.now()
        self.events.append({"t_s": round(t, 1), "event": event, **detail})
        extra = ", ".join(f"{k}={v}" for k, v in detail.items())
        self.log(f"[{t:7.1f}s] {event}" + (f" ({extra})" if extra else ""))


class Supervisor:
    """Restarts a platform process that died by itself (as Compose's restart policy would) and
    records it; processes the injector is working on are left alone."""

    def __init__(self, platform: Platform, timeline: Timeline):
        self.platform = platform
        self.timeline = timeline
        self.hands_off_keys: set[tuple[str, str]] = set()
        self.exits: list[dict[str, Any]] = []
        self._last_start: dict[tuple[str, str], float] = {}

    @contextlib.contextmanager
    def hands_off(self, *keys: tuple[str, str]) -> Iterator[None]:
        self.hands_off_keys.update(keys)
        try:
            yield
        finally:
            self.hands_off_keys.difference_update(keys)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for key, proc in self.platform.procs.items():
                if key in self.hands_off_keys or proc.popen is None or proc.alive:
                    continue
                if time.monotonic() - self._last_start.get(key, 0) < 2:
                    continue
                code = proc.popen.returncode
                tail = _log_tail(proc)
                self.exits.append({"t_s": round(self.timeline.now(), 1), "process": f"{key[0]}-{key[1]}",
                                   "exit_code": code, "log_tail": tail})
                self.timeline.note(f"{key[0]} {key[1]} exited by itself (code {code}): restarted",
                                   last_line=tail.splitlines()[-1][:160] if tail else "")
                self._last_start[key] = time.monotonic()
                proc.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


def _exit_code(proc: Proc) -> int | None:
    return proc.popen.returncode if proc.popen is not None else None


def _log_tail(proc: Proc, chars: int = 2000) -> str:
    try:
        return proc.log_path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


async def all_ready(platform: Platform, timeout_s: float) -> float:
    """Seconds until every process answers /readyz (one that died meanwhile is the supervisor's:
    it counts as not ready); raises after ``timeout_s``."""
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:

        async def ready(p: Proc) -> bool:
            try:
                async with session.get(f"http://127.0.0.1:{p.port}/readyz") as r:
                    return r.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        while time.monotonic() - started < timeout_s:
            answers = await asyncio.gather(*(ready(p) for p in platform.procs.values()))
            if all(answers):
                return time.monotonic() - started
            await asyncio.sleep(0.3)
    late = [f"{p.service}-{p.kind}" for p in platform.procs.values() if not p.alive]
    raise RuntimeError(f"not every process ready after {timeout_s:.0f}s (dead: {late})")


# --- the faults --------------------------------------------------------------------------------------------


async def inject_worker_kills(platform: Platform, tl: Timeline, sup: Supervisor) -> dict[str, Any]:
    keys = [(s, "worker") for s in SERVICES]
    with sup.hands_off(*keys):
        pids = {}
        for key in keys:
            proc = platform.proc(*key)
            pids[key[0]] = proc.popen.pid if proc.popen is not None else None
            proc.kill()
        codes = {k[0]: _exit_code(platform.proc(*k)) for k in keys}
        tl.note("SIGKILL order, payment, minting and stamping workers", pids=pids)
        await platform.start(*keys)
    tl.note("the four workers restarted and ready")
    return {"killed": pids, "exit_codes": codes, "ok": all(c == -9 for c in codes.values())}


async def inject_rabbitmq_restart(platform: Platform, tl: Timeline, down_s: float,
                                  recovery_timeout_s: float) -> dict[str, Any]:
    await asyncio.to_thread(require_restart_headroom)  # or the broker might never boot again
    tl.note("rabbitmqctl stop_app")
    stopped = await asyncio.to_thread(_run, ["rabbitmqctl", "stop_app"])
    try:
        await asyncio.sleep(down_s)
    finally:
        tl.note("rabbitmqctl start_app")
        started = await asyncio.to_thread(_run, ["rabbitmqctl", "start_app"])
        await wait_rabbitmq()
    tl.note("RabbitMQ is up")
    recovered = await all_ready(platform, recovery_timeout_s)
    tl.note("every process ready again", after_s=round(recovered, 1))
    return {"stop_app": stopped.returncode, "start_app": started.returncode, "down_s": down_s,
            "ok": stopped.returncode == 0 and started.returncode == 0}


async def inject_postgresql_restart(platform: Platform, tl: Timeline, down_s: float,
                                    recovery_timeout_s: float) -> dict[str, Any]:
    version, name = postgres_cluster()
    tl.note(f"pg_ctlcluster {version} {name} stop (fast)")
    stopped = await asyncio.to_thread(_pg_ctl, "stop")
    try:
        await asyncio.sleep(down_s)
    finally:
        tl.note(f"pg_ctlcluster {version} {name} start")
        started = await asyncio.to_thread(_pg_ctl, "start")
        await wait_postgres()
    tl.note("PostgreSQL is up")
    recovered = await all_ready(platform, recovery_timeout_s)
    tl.note("every process ready again", after_s=round(recovered, 1))
    return {"stop": stopped.returncode, "start": started.returncode, "down_s": down_s,
            "stderr": (stopped.stderr + started.stderr).strip()[:500],
            "ok": stopped.returncode == 0 and started.returncode == 0}


async def inject_stamping_kill_after_sign(platform: Platform, tl: Timeline, sup: Supervisor,
                                          wait_s: float) -> dict[str, Any]:
    key = ("stamping", "worker")
    proc = platform.proc(*key)
    with sup.hands_off(key):
        await platform.restart(*key, extra_env={FAILPOINTS_ENV: "stamping.after_sign=kill"})
        tl.note("stamping worker restarted with EMETERAI_FAILPOINTS=stamping.after_sign=kill")
        deadline = time.monotonic() + wait_s
        while proc.alive and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        triggered = not proc.alive
        code = proc.popen.returncode if proc.popen is not None else None
        if triggered:
            tl.note("stamping worker SIGKILLed itself after a signature, before its commit", exit_code=code)
        else:
            tl.note(f"no job signed within {wait_s:.0f}s: failpoint not triggered")
        await platform.restart(*key)
    tl.note("stamping worker restarted without the failpoint and ready")
    return {"triggered": triggered, "exit_code": code, "ok": (code == -9) if triggered else True}


async def _quorum_back(cluster: Cluster, vhost: str, tl: Timeline, timeout_s: float) -> tuple[bool, str]:
    ok, reported = await asyncio.to_thread(cluster.wait_healthy, vhost, timeout_s)
    tl.note("cluster healthy again" if ok else "cluster NOT healthy", broker=reported)
    return ok, reported


def _busiest(cluster: Cluster, connections: Mapping[str, int]) -> str:
    return max(connections, key=lambda n: connections[n]) if connections else cluster.nodes[0].nodename


async def inject_cluster_node_kill(platform: Platform, tl: Timeline, cluster: Cluster, cfg: ChaosConfig
                                   ) -> dict[str, Any]:
    connections = await asyncio.to_thread(cluster.connections)
    target = _busiest(cluster, connections)
    pid = await asyncio.to_thread(cluster.kill_node, target)
    tl.note(f"SIGKILL {target}", beam_pid=pid, client_connections=connections)
    await asyncio.sleep(cfg.cluster_down_s)
    running = await asyncio.to_thread(cluster.running_nodes)
    quorum = (await asyncio.to_thread(cluster.quorum_healthy, cfg.vhost))[1]
    tl.note(f"broker while {target} is down", running=running, quorum=quorum)
    await asyncio.to_thread(cluster.restart_node, target)
    tl.note(f"{target} started again")
    healthy, reported = await _quorum_back(cluster, cfg.vhost, tl, cfg.recovery_timeout_s)
    recovered = await all_ready(platform, cfg.recovery_timeout_s)
    after = await asyncio.to_thread(cluster.connections)
    tl.note("every process ready again", after_s=round(recovered, 1), client_connections=after)
    return {"target": target, "pid": pid, "connections_before": connections, "connections_after": after,
            "while_down": {"running": running, "quorum": quorum}, "after": reported, "down_s": cfg.cluster_down_s,
            "ok": pid is not None and healthy}


PARTITION_MEMBERS_WAIT_S = 90.0
"""How long after a partition heals the quorum queues get to be whole by themselves before the
operator's remedy (restart the healed node's RabbitMQ application)."""


STOP_APP_TIMEOUT_S = 120.0
"""How long ``rabbitmqctl stop_app`` gets before the operator's next step (the node's VM killed and
booted again)."""


async def _restart_app(cluster: Cluster, target: str, tl: Timeline) -> str:
    """The operator's remedy on a healed node: ``rabbitmqctl stop_app`` then ``start_app``; when
    ``stop_app`` does not answer in time (seen on a loaded machine, the node busy with its quorum
    queues' members), the next step: the node's VM killed and booted again. Returns what was done
    beyond the remedy (for the report), or ""."""
    try:
        await asyncio.to_thread(cluster.ctl, target, "stop_app", check=False, timeout=STOP_APP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        escalation = (f"; stop_app did not answer within {STOP_APP_TIMEOUT_S:.0f} s: the node's VM killed and "
                      "booted again")
        tl.note(escalation.removeprefix("; "))
        await asyncio.to_thread(cluster.kill_node, target)
        await asyncio.to_thread(cluster.restart_node, target)
        return escalation
    await asyncio.to_thread(cluster.ctl, target, "start_app", check=False, timeout=180)
    return ""


async def inject_cluster_partition(platform: Platform, tl: Timeline, cluster: Cluster, cfg: ChaosConfig
                                   ) -> dict[str, Any]:
    connections = await asyncio.to_thread(cluster.connections)
    target = _busiest(cluster, connections)
    others = [n for n in cluster.nodes if n.nodename != target]
    await asyncio.to_thread(cluster.partition, target)
    tl.note(f"{target} cut off: {cluster.partition_kind}", client_connections=connections)
    await asyncio.sleep(cfg.partition_s)
    running = await asyncio.to_thread(cluster.running_nodes, others[0])
    quorum = (await asyncio.to_thread(cluster.quorum_healthy, cfg.vhost, others[0], 20))[1]
    try:
        partitions = (await asyncio.to_thread(cluster.ctl, others[0], "eval", "rabbit_node_monitor:partitions().",
                                              check=False, timeout=20)).stdout.strip()
    except subprocess.TimeoutExpired:
        partitions = "no answer within 20s"
    tl.note(f"the majority's view after {cfg.partition_s:.0f}s", running=running, partitions=partitions,
            quorum=quorum)
    await asyncio.to_thread(cluster.heal, target)
    tl.note(f"{target} reconnected")
    remedy = ""
    try:
        await asyncio.to_thread(cluster.wait_running, cluster.size, 90)
    except RuntimeError:  # it did not rejoin by itself: the operator's remedy, reported as such
        remedy = f"{target} did not rejoin within 90 s by itself: rabbitmqctl stop_app, start_app"
        tl.note(remedy)
        remedy += await _restart_app(cluster, target, tl)
    first_wait_s = min(cfg.recovery_timeout_s, PARTITION_MEMBERS_WAIT_S)
    healthy, reported = await _quorum_back(cluster, cfg.vhost, tl, first_wait_s)
    if not healthy and not remedy:
        # RabbitMQ 3.10 restarts a node's quorum-queue members when the node boots; after a
        # pause_minority pause some of an idle queue's members on the healed node were seen to stay
        # offline for minutes (a rolling restart brought them back). The operator's remedy, reported:
        remedy = (f"quorum queue members on {target} not all back {first_wait_s:.0f} s after the partition "
                  f"healed ({reported}): rabbitmqctl stop_app, start_app on {target}")
        tl.note(remedy)
        remedy += await _restart_app(cluster, target, tl)
        healthy, reported = await _quorum_back(cluster, cfg.vhost, tl, cfg.recovery_timeout_s)
    elif not healthy:
        healthy, reported = await _quorum_back(cluster, cfg.vhost, tl, cfg.recovery_timeout_s)
    recovered = await all_ready(platform, cfg.recovery_timeout_s)
    after = await asyncio.to_thread(cluster.connections)
    tl.note("every process ready again", after_s=round(recovered, 1), client_connections=after)
    return {"target": target, "how": cluster.partition_kind, "connections_before": connections,
            "connections_after": after, "during": {"running": running, "partitions": partitions, "quorum": quorum},
            "after": reported, "partition_s": cfg.partition_s, "remedy": remedy,
            "ok": healthy and target not in running}


async def inject_cluster_rolling_restart(platform: Platform, tl: Timeline, cluster: Cluster, cfg: ChaosConfig
                                         ) -> dict[str, Any]:
    steps = []
    for node in cluster.nodes:
        connections = await asyncio.to_thread(cluster.connections)
        tl.note(f"rabbitmqctl -n {node.nodename} stop", client_connections=connections)
        await asyncio.to_thread(cluster.stop_node, node)
        await asyncio.to_thread(cluster.restart_node, node)
        tl.note(f"{node.nodename} started again")
        healthy, reported = await _quorum_back(cluster, cfg.vhost, tl, cfg.recovery_timeout_s)
        steps.append({"node": node.nodename, "healthy": healthy, "after": reported})
    recovered = await all_ready(platform, cfg.recovery_timeout_s)
    after = await asyncio.to_thread(cluster.connections)
    tl.note("every process ready again", after_s=round(recovered, 1), client_connections=after)
    return {"steps": steps, "connections_after": after, "after": steps[-1]["after"] if steps else "",
            "ok": all(s["healthy"] for s in steps)}


# --- the load: applicants through the public interfaces ------------------------------------------------------


GaveUp = Refused
"""An applicant gives up: an answer its journey does not allow, or none before its deadline."""


@dataclass
class Applicant:
    index: int
    arrives_at_s: float
    stage: str = "waiting"
    order_id: str | None = None
    order_status: str | None = None
    payment_request_id: str | None = None
    bank_acknowledged: bool = False
    duplicate: str | None = None
    duplicate_answer: str | None = None
    serials: list[str] = field(default_factory=list)
    stampings: dict[str, str] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)
    error: str | None = None


class Load:
    """``applicants`` (default ``cfg.applicants``) arriving evenly over ``arrival_s`` (default
    ``cfg.arrival_s``) from ``start_s`` on the timeline; their indexes (phones, idempotency keys)
    start at ``first``, so that the loads of one run's segments never share an applicant."""

    def __init__(self, platform: Platform, cfg: ChaosConfig, tl: Timeline, *, applicants: int | None = None,
                 arrival_s: float | None = None, first: int = 0, start_s: float = 0.0):
        from emeterai_testkit.documents import sample_pdf

        self.platform = platform
        self.cfg = cfg
        self.tl = tl
        self.stats = Stats()
        self.answers: Counter[str] = self.stats.statuses
        """Every answer, ``"<step> <status or SNAP code>"`` (lost connections: the exception)."""
        self.unhinted: Counter[str] = self.stats.unhinted
        """429/503 answers of the platform's front doors that came without ``Retry-After``."""
        self.document = sample_pdf(3)
        n = cfg.applicants if applicants is None else applicants
        window = cfg.arrival_s if arrival_s is None else arrival_s
        self.applicants = [Applicant(first + i, round(start_s + i * window / max(1, n), 2)) for i in range(n)]
        self._token_lock = asyncio.Lock()
        self.seconds = 0.0

    async def run(self) -> None:
        started = time.monotonic()
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
            self.session = session
            self.client = Client(session, self.platform.urls(), stats=self.stats, transport_retries=None,
                                 retry_server_errors=True)
            self.bank = self.platform.simulator(session)
            await asyncio.gather(*(self._applicant(a) for a in self.applicants))
        self.seconds = time.monotonic() - started

    async def _applicant(self, a: Applicant) -> None:
        await asyncio.sleep(max(0.0, a.arrives_at_s - self.tl.now()))
        deadline = time.monotonic() + self.cfg.applicant_timeout_s
        try:
            await self._journey(a, deadline)
        except GaveUp as exc:
            a.error = str(exc)
        except Exception as exc:  # a bug in the load must not hide the checks
            a.error = f"{type(exc).__name__}: {exc}"

    # the steps ------------------------------------------------------------------------------

    async def _journey(self, a: Applicant, deadline: float) -> None:
        a.stage = "register"
        status, body = await self._call("account", "POST", "order", "/v1/accounts", deadline, lambda: {
            "json": {"name": f"Pelamar {a.index}", "phone": f"+62812{a.index:08d}"},
            "headers": {"Idempotency-Key": f"chaos-account-{a.index}-{self.cfg.namespace}"}})
        if status != 201:
            raise GaveUp(f"register answered {status}: {body}")
        auth = {"Authorization": f"Bearer {body['token']}"}
        a.stage = "order"
        order_key = str(uuid.uuid4())
        status, body = await self._call("order", "POST", "order", "/v1/orders", deadline, lambda: {
            "json": {"quantity": self.cfg.stamps_per_applicant}, "headers": {**auth, "Idempotency-Key": order_key}})
        if status != 202:
            raise GaveUp(f"order answered {status}: {body}")
        a.order_id = str(body["order_id"])
        a.stage = "bill"
        order = await self._poll("order_get", "order", f"/v1/orders/{a.order_id}", auth, deadline,
                                 lambda o: o.get("payment") is not None or o.get("status") != "AWAITING_PAYMENT")
        if order.get("payment") is None:
            a.order_status = order.get("status")
            raise GaveUp(f"order {a.order_status} without a bill: {order.get('failure_reason')}")
        a.stage = "pay"
        if not await self._pay(a, order["payment"], deadline):
            return
        a.stage = "fulfil"
        order = await self._poll("order_get", "order", f"/v1/orders/{a.order_id}", auth, deadline,
                                 lambda o: o.get("status") in ("FULFILLED", "REFUNDED", "FAILED", "EXPIRED"))
        a.order_status = order["status"]
        if a.order_status != "FULFILLED":
            a.stage = a.order_status.lower()
            return
        a.serials = list(order["serials"])
        a.stage = "quota"
        await self._poll("quota", "stamping", "/v1/quota", auth, deadline,
                         lambda q: set(a.serials) <= set(q.get("serials_available", [])))
        a.stage = "upload"
        ids = []
        for n in range(self.cfg.documents_per_applicant):
            key = str(uuid.uuid4())

            def upload(n: int = n, key: str = key) -> dict[str, Any]:
                return {"data": self._form(n), "headers": {**auth, "Idempotency-Key": key}}

            status, body = await self._call("upload", "POST", "stamping", "/v1/stampings", deadline, upload)
            if status == 202:
                ids.append(str(body["stamping_id"]))
            else:
                a.refusals.append(f"upload {status} {body.get('error', {}).get('code')}")
        a.stage = "stamp"
        for sid in ids:
            job = await self._poll("stamping_get", "stamping", f"/v1/stampings/{sid}", auth, deadline,
                                   lambda j: j.get("status") in ("DONE", "FAILED"))
            a.stampings[sid] = job["status"]
        a.stage = "done"

    def _form(self, n: int) -> aiohttp.FormData:
        form = aiohttp.FormData()
        form.add_field("file", self.document, filename=f"lamaran-{n}.pdf", content_type="application/pdf")
        for name, value in (("page", 1 + n % 3), ("x", 72), ("y", 72), ("size", 100), ("reason", "Lamaran CASN")):
            form.add_field(name, str(value))
        return form

    async def _call(self, step: str, method: str, service: str, path: str, deadline: float,
                    kwargs: Callable[[], dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        """One request through the test kit's ``Client``: retried on 429/503 after Retry-After and on
        5xx or a lost connection after a capped backoff, until ``deadline``; any other answer is
        returned (``kwargs``: ``json``, ``headers``, ``data``, built again for every try)."""
        first = kwargs()
        answer = await self.client.call(method, service, path, step, ok=None, deadline=deadline,
                                        json=first.get("json"), headers=first.get("headers"),
                                        data=(lambda: kwargs().get("data")) if "data" in first else None)
        return answer.status, answer.data

    async def _poll(self, step: str, service: str, path: str, auth: dict[str, str], deadline: float,
                    done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:
            status, body = await self._call(step, "GET", service, path, deadline, lambda: {"headers": auth})
            if status == 200 and done(body):
                return body
            if status != 200:
                raise GaveUp(f"{step} answered {status}: {body}")
            await asyncio.sleep(self.cfg.poll_interval_s * random.uniform(0.7, 1.3))

    async def _bank_token(self, deadline: float) -> str:
        async with self._token_lock:
            backoff = 0.5
            while self.bank.access_token is None:
                if time.monotonic() > deadline:
                    raise GaveUp("snap token: refused until the deadline")
                try:
                    status, body = await self.bank.get_token()
                    self.answers[f"snap_token {body.get('responseCode', status)}"] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.answers[f"snap_token {type(exc).__name__}"] += 1
                if self.bank.access_token is None:
                    await asyncio.sleep(backoff)
                    backoff = min(5.0, backoff * 2)
            token: str = self.bank.access_token
            return token

    async def _pay(self, a: Applicant, bill: dict[str, Any], deadline: float) -> bool:
        """The bank pays the bill; while it gets no definite answer it re-sends the same payment
        (same paymentRequestId and time) as an advice (``flagAdvise=Y``), as banks do."""
        from payment_service.adapters.snap import PAYMENT_PATH

        assert self.platform.bank is not None
        customer_no = self.platform.bank.customer_no(str(bill["virtual_account_no"]))
        amount = int(bill["amount"])
        prid = uuid.uuid4().hex
        a.payment_request_id = prid
        paid_at = datetime.now(UTC)
        flag: FlagAdvise = "N"
        backoff = 0.5
        while True:
            if time.monotonic() > deadline:
                raise GaveUp("pay: no definite answer from the biller before the deadline")
            token = await self._bank_token(deadline)
            body = self.bank.payment_body(customer_no, amount, payment_request_id=prid, flag_advise=flag,
                                          paid_at=paid_at)
            request = self.bank.build_signed_request(PAYMENT_PATH, body, access_token=token)
            try:
                status, answer = await self.bank.send(request)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.answers[f"snap_payment {type(exc).__name__}"] += 1
                flag = "Y"
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)
                continue
            code = str(answer.get("responseCode", f"http{status}"))
            self.answers[f"snap_payment {code}"] += 1
            if code == SNAP_PAID:
                a.bank_acknowledged = True
                break
            if status == 401:
                async with self._token_lock:
                    if self.bank.access_token == token:
                        self.bank.access_token = None
                continue
            if status in (429, 503) or status >= 500:
                flag = "Y"
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)
                continue
            a.refusals.append(f"payment {code} {answer.get('responseMessage')}")
            a.stage = "payment_refused"
            return False
        roll = random.random()
        if roll < self.cfg.duplicate_share / 2:
            a.duplicate = "advice"
            body = self.bank.payment_body(customer_no, amount, payment_request_id=prid, flag_advise="Y",
                                          paid_at=paid_at)
            again = self.bank.build_signed_request(PAYMENT_PATH, body, access_token=await self._bank_token(deadline))
        elif roll < self.cfg.duplicate_share:
            a.duplicate = "replay"
            again = request
        else:
            return True
        try:
            status, answer = await self.bank.send(again)
            a.duplicate_answer = str(answer.get("responseCode", f"http{status}"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            a.duplicate_answer = type(exc).__name__
        self.answers[f"snap_duplicate_{a.duplicate} {a.duplicate_answer}"] += 1
        return True

    def summary(self) -> dict[str, Any]:
        stages = Counter(a.stage for a in self.applicants)
        stampings = Counter(s for a in self.applicants for s in a.stampings.values())
        dup = Counter(f"{a.duplicate} {a.duplicate_answer}" for a in self.applicants if a.duplicate)
        return {
            "applicants": len(self.applicants), "seconds": round(self.seconds, 1), "final_stage": dict(stages),
            "bank_acknowledged": sum(a.bank_acknowledged for a in self.applicants),
            "stampings_seen": dict(stampings), "duplicate_callbacks": dict(dup),
            "gave_up": [{"applicant": a.index, "stage": a.stage, "order_id": a.order_id, "error": a.error}
                        for a in self.applicants if a.error][:50],
            "refusals": [{"applicant": a.index, "refusals": a.refusals} for a in self.applicants if a.refusals][:50],
            "answers": dict(sorted(self.answers.items())),
        }


def _server_error(answer: str) -> bool:
    """An HTTP 5xx other than 503, or a SNAP ``500xxxx`` (unexpected failure) answer."""
    if not answer.isdigit():
        return False
    return (len(answer) == 3 and answer.startswith("5") and answer != "503") or (
        len(answer) == 7 and answer.startswith("500"))


def front_doors(answers: Mapping[str, int], unhinted: Mapping[str, int]) -> Check:
    """The invariant "front doors answer faults with 503 + Retry-After, never another 5xx": no HTTP
    5xx but 503, no SNAP ``500xxxx`` (a SNAP fault is ``504xx00`` Timeout, SNAP's way of saying "try
    again"), and no 429/503 without ``Retry-After``. ``answers``/``unhinted``: ``Load``'s counters."""
    errors = {k: v for k, v in answers.items() if _server_error(k.split()[-1])}
    violations = [f"{k}: {v}" for k, v in sorted(errors.items())]
    violations += [f"{k} without Retry-After: {v}" for k, v in sorted(unhinted.items())]
    return Check("front doors answered faults with 503 + Retry-After, never another 5xx", not violations,
                 f"{sum(errors.values())} other 5xx answer(s), {sum(unhinted.values())} 429/503 without Retry-After",
                 violations=violations)


# --- quiescence --------------------------------------------------------------------------------------------


def _amqp(platform: Platform) -> str:
    """The platform's broker address(es), comma-separated (``connect`` takes them so)."""
    return ",".join(platform.settings["order"].amqp_addresses)


async def in_flight(platform: Platform, vhost: str, depths: Depths | None = None) -> dict[str, Any]:
    """What is still moving: outbox backlogs, non-empty queues, unfinished jobs and orders."""
    async with invariants.pools_of({svc: s.database_url for svc, s in platform.settings.items()}) as pools:
        stats = await invariants.outbox_stats(pools)
        outbox = {svc: f"{r['backlog']} rows, oldest {r['oldest_s']}s" for svc, r in stats.items() if r["backlog"]}
        found = await (depths or queue_depths)(vhost)
        queues = {q: n for q, n in found.items() if n and not q.endswith(".parking")}
        jobs = await pools["stamping"].fetchval(
            "SELECT count(*) FROM stampings WHERE status IN ('QUEUED', 'STAMPING')")
        moving = [r["id"] for r in await pools["order"].fetch(
            "SELECT id::text AS id FROM orders WHERE status = ANY($1)", list(TRANSITIONAL_ORDER_STATES))]
        if moving:  # an order whose only pending step is a parked message is not moving: it is stranded
            # every parking queue: list_queues' counts lag behind
            parked, live = await invariants.parked_work(pools, _amqp(platform),
                                                        invariants.consumer_queues())
            stuck = stranded(moving, parked, live)
            moving = [o for o in moving if o not in stuck]
    busy = {k: v for k, v in {"outbox": outbox, "queues": queues,
                              "stamping_jobs_unfinished": jobs, "orders_in_transition": len(moving)}.items() if v}
    return busy


async def wait_quiescent(platform: Platform, vhost: str, tl: Timeline, timeout_s: float,
                         stable_polls: int = 3, interval_s: float = 2.0, depths: Depths | None = None
                         ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    stable = 0
    busy: dict[str, Any] = {}
    said = 0.0
    while time.monotonic() < deadline:
        try:
            busy = await in_flight(platform, vhost, depths)
        except Exception as exc:
            busy = {"error": repr(exc)}
        stable = stable + 1 if not busy else 0
        if busy and time.monotonic() - said > 15:
            tl.note("waiting for quiescence", still=busy)
            said = time.monotonic()
        if stable >= stable_polls:
            tl.note("quiescent: outboxes published, queues empty, no job or order in flight")
            return {"reached": True, "after_s": round(time.monotonic() - started, 1)}
        await asyncio.sleep(interval_s)
    tl.note("NOT quiescent", still=busy)
    return {"reached": False, "after_s": round(time.monotonic() - started, 1), "still_in_flight": busy}


# --- the checks: emeterai_testkit.invariants ---------------------------------------------------------------


async def collect(platform: Platform, vhost: str, depths: Depths | None = None) -> dict[str, Any]:
    """Everything the invariants read (``invariants.snapshot``), from the platform's four
    databases and its broker (``depths``: a cluster's queue depths instead of the machine broker's)."""
    async with invariants.pools_of({svc: s.database_url for svc, s in platform.settings.items()}) as pools:
        if depths is None:
            return await invariants.snapshot(pools, amqp_url=_amqp(platform),
                                             queues=invariants.consumer_queues(), vhost=vhost)
        data = await invariants.snapshot(pools, amqp_url=_amqp(platform), queues=invariants.consumer_queues())
        data["queues"] = await depths(vhost)
        return data


# --- the run -----------------------------------------------------------------------------------------------


async def run(cfg: ChaosConfig, workdir: Path, *, amqp_url: str | None = None, log: Log = print,
              cluster: Cluster | None = None) -> dict[str, Any]:
    """Start the platform, run the load with the faults, wait for quiescence, check. The caller
    holds the exclusive server lock and made the vhost fresh. ``cluster``: the services use its three
    nodes (``amqp_url``: their URLs, comma-separated) and the cluster faults are its own, and the run
    goes in segments, one per fault, each checked (``_run_segments``)."""
    require_tools()
    depths: Depths | None = None
    if cluster is not None:
        the_cluster = cluster

        async def depths(vhost: str) -> dict[str, int]:
            return await asyncio.to_thread(the_cluster.queue_depths, vhost)

        amqp_url = amqp_url or ",".join(cluster.urls(cfg.vhost))
    load_start = os.getloadavg()[0]
    report: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                              "namespace": cfg.namespace, "config": {**asdict(cfg), "vhost": cfg.vhost}}
    if cluster is not None:
        report["cluster"] = {"nodes": [n.nodename for n in cluster.nodes], "urls": cluster.urls(cfg.vhost),
                             "partition": cluster.partition_kind}
    injections: list[dict[str, Any]] = []
    try:
        async with chaos_platform(cfg, workdir, amqp_url=amqp_url, log=log) as platform:
            tl = Timeline(log)
            sup = Supervisor(platform, tl)
            stop = asyncio.Event()
            supervising = asyncio.create_task(sup.run(stop))
            if cluster is not None:
                try:
                    await _run_segments(platform, cfg, tl, sup, cluster, depths, report)
                finally:
                    stop.set()
                    await supervising
            else:
                load = Load(platform, cfg, tl)
                tl.note(f"load: {cfg.applicants} applicants arriving over {cfg.arrival_s:.0f}s")
                loading = asyncio.create_task(load.run())
                try:
                    for fraction, kind in cfg.schedule:
                        await asyncio.sleep(max(0.0, fraction * cfg.arrival_s - tl.now()))
                        injections.append(await _inject(kind, platform, tl, sup, cfg, cluster))
                    await loading
                    tl.note("load finished", **{k: v for k, v in Counter(a.stage for a in load.applicants).items()})
                    quiescence, data, checks = await _check(platform, cfg, tl, [load], sup.exits, depths)
                    report.update(timeline=tl.events, injections=injections, load=load.summary(),
                                  quiescence=quiescence, counts=counts(data), parked=data["parked"],
                                  process_exits=sup.exits, checks=_rows(checks))
                finally:
                    stop.set()
                    await supervising
                    await _cancelled(loading)
    finally:
        servers = await asyncio.to_thread(ensure_servers_running, log)
        report["servers_after"] = servers
        report["loadavg_1m"] = {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)}
    if "segments" in report:  # every segment's violations; a segment not run fails the run too
        report["violations"] = sum(s["violations"] for s in report["segments"])
        report["ok"] = "checks" in report and not report["violations"] and not report["segments_skipped"]
        return report
    violations = [c for c in report.get("checks", []) if c["kind"] == "invariant" and not c["ok"]]
    report["violations"] = len(violations)
    report["ok"] = "checks" in report and not violations
    return report


async def _cancelled(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _rows(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(c) | {"status": c.status()} for c in checks]


def _violated(rows: list[dict[str, Any]]) -> int:
    return sum(1 for c in rows if c["kind"] == "invariant" and not c["ok"])


async def _check(platform: Platform, cfg: ChaosConfig, tl: Timeline, loads: list[Load],
                 exits: list[dict[str, Any]], depths: Depths | None
                 ) -> tuple[dict[str, Any], dict[str, Any], list[Check]]:
    """Quiescence, then the invariants from the databases and the broker (``evaluate``: the whole
    state, so everything ``loads`` did so far), the front doors as the last of ``loads`` saw them, and
    the processes that died by themselves (``exits``)."""
    quiescence = await wait_quiescent(platform, cfg.vhost, tl, cfg.quiesce_timeout_s, depths=depths)
    data = await collect(platform, cfg.vhost, depths)
    acknowledged = {a.payment_request_id for load in loads for a in load.applicants
                    if a.bank_acknowledged and a.payment_request_id}
    checks = evaluate(data, acknowledged, quiescence)
    checks.append(front_doors(loads[-1].answers, loads[-1].unhinted))
    if exits:
        checks.append(Check("no process died by itself", False,
                            f"{len(exits)} unexpected exit(s), restarted", kind="observation",
                            violations=[f"{e['process']} code {e['exit_code']} at {e['t_s']}s" for e in exits]))
    else:
        checks.append(Check("no process died by itself", True, "only the injected kills", kind="observation"))
    return quiescence, data, checks


def segment_plan(cfg: ChaosConfig) -> list[tuple[float, str | None, int]]:
    """A cluster run's segments: one per fault of ``cfg.schedule``, in order (one without a fault if
    the schedule is empty), as ``(fraction of the segment's arrival window, fault, applicants)``.
    ``cfg.applicants`` and ``cfg.arrival_s`` are divided between the segments: each gets
    ``applicants // n`` applicants (the first ``applicants % n`` one more) arriving over
    ``arrival_s / n``, so a run has as many applicants and arrival time in all as without segments."""
    faults: list[tuple[float, str | None]] = list(cfg.schedule) or [(0.0, None)]
    n = len(faults)
    return [(fraction, kind, cfg.applicants // n + (1 if i < cfg.applicants % n else 0))
            for i, (fraction, kind) in enumerate(faults)]


async def _run_segments(platform: Platform, cfg: ChaosConfig, tl: Timeline, sup: Supervisor,
                        cluster: Cluster, depths: Depths | None, report: dict[str, Any]) -> None:
    """One segment per fault (``segment_plan``): its applicants arrive (indexes after the previous
    segments'), the fault is injected at its fraction of the segment's arrival window, and once the
    load is done and the platform quiescent the invariants are checked, before the next segment
    starts. ``report``: ``segments`` (each: fault, injection, load, quiescence, counts, checks,
    violations), ``segments_skipped`` (a segment that did not reach quiescence ends the run: the
    next one's checks would mix both), and the top-level keys over the whole run: ``injections``
    (every segment's), ``load`` (the segments' loads added up), ``quiescence`` (reached after every
    segment), ``counts``/``parked`` (the last check: the whole state), ``checks`` (each check once:
    ok only if it held after every fault; detail of the last segment; every segment's violations,
    each prefixed with its fault)."""
    plan = segment_plan(cfg)
    window = cfg.arrival_s / len(plan)
    loads: list[Load] = []
    segments: list[dict[str, Any]] = []
    first = 0
    report.update(segments=segments, segments_skipped=[])
    for n, (fraction, kind, applicants) in enumerate(plan, 1):
        name = kind or "no fault"
        start = tl.now()
        exits_before = len(sup.exits)
        load = Load(platform, cfg, tl, applicants=applicants, arrival_s=window, first=first, start_s=start)
        loads.append(load)
        tl.note(f"segment {n}/{len(plan)} ({name}): {applicants} applicants (#{first}..#{first + applicants - 1}) "
                f"arriving over {window:.0f}s")
        loading = asyncio.create_task(load.run())
        injection: dict[str, Any] | None = None
        try:
            if kind is not None:
                await asyncio.sleep(max(0.0, start + fraction * window - tl.now()))
                injection = await _inject(kind, platform, tl, sup, cfg, cluster)
            await loading
        finally:
            await _cancelled(loading)
        tl.note(f"segment {n}/{len(plan)}: load finished",
                **{k: v for k, v in Counter(a.stage for a in load.applicants).items()})
        exits = sup.exits[exits_before:]
        quiescence, data, checks = await _check(platform, cfg, tl, loads, exits, depths)
        rows = _rows(checks)
        segments.append({"fault": kind, "what": INJECTIONS.get(kind, kind) if kind else "no fault",
                         "started_at_s": round(start, 1), "applicants": applicants, "first_applicant": first,
                         "arrival_s": round(window, 1), "injection": injection, "load": load.summary(),
                         "quiescence": quiescence, "counts": counts(data), "parked_count": len(data["parked"]),
                         "process_exits": exits, "checks": rows, "violations": _violated(rows)})
        tl.note(f"segment {n}/{len(plan)}: after {name}, {_violated(rows)} invariant(s) violated")
        first += applicants
        report.update(timeline=tl.events, injections=[s["injection"] for s in segments if s["injection"]],
                      load=_merged_loads([s["load"] for s in segments]),
                      quiescence=_merged_quiescence([s["quiescence"] for s in segments]),
                      counts=counts(data), parked=data["parked"], process_exits=sup.exits,
                      checks=_merged_checks(segments))
        if not quiescence.get("reached") and n < len(plan):
            report["segments_skipped"] = [k for _, k, _ in plan[n:]]
            tl.note("not quiescent: the remaining segments are skipped", skipped=report["segments_skipped"])
            break


def _merged_loads(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    def added(key: str) -> dict[str, int]:
        total: Counter[str] = Counter()
        for s in summaries:
            total.update(s[key])
        return dict(total)

    return {"applicants": sum(s["applicants"] for s in summaries),
            "seconds": round(sum(s["seconds"] for s in summaries), 1),
            "final_stage": added("final_stage"), "bank_acknowledged": sum(s["bank_acknowledged"] for s in summaries),
            "stampings_seen": added("stampings_seen"), "duplicate_callbacks": added("duplicate_callbacks"),
            "gave_up": [g for s in summaries for g in s["gave_up"]][:50],
            "refusals": [r for s in summaries for r in s["refusals"]][:50],
            "answers": dict(sorted(added("answers").items()))}


def _merged_quiescence(found: list[dict[str, Any]]) -> dict[str, Any]:
    missed = [q for q in found if not q.get("reached")]
    merged: dict[str, Any] = {"reached": not missed, "after_s": max((q["after_s"] for q in found), default=0.0)}
    if missed:
        merged["still_in_flight"] = missed[0].get("still_in_flight")
    return merged


def _merged_checks(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    failed_after: dict[str, list[str]] = {}
    for s in segments:
        name = s["fault"] or "no fault"
        for c in s["checks"]:
            tagged = [f"after {name}: {v}" for v in c["violations"]]
            if not c["ok"]:
                failed_after.setdefault(c["name"], []).append(name)
            if c["name"] not in merged:
                merged[c["name"]] = {**c, "violations": tagged}
            else:
                m = merged[c["name"]]
                m.update(ok=m["ok"] and c["ok"], detail=c["detail"], violations=m["violations"] + tagged)
    for name, m in merged.items():
        m["status"] = "ok" if m["ok"] else ("FAIL" if m["kind"] == "invariant" else "WARN")
        if name in failed_after:
            m["detail"] = f"failed after {', '.join(failed_after[name])}; after the last: {m['detail']}"
    return list(merged.values())


async def _inject(kind: str, platform: Platform, tl: Timeline, sup: Supervisor, cfg: ChaosConfig,
                  cluster: Cluster | None = None) -> dict[str, Any]:
    started = tl.now()
    try:
        if kind in CLUSTER_INJECTIONS and cluster is None:
            raise ValueError(f"{kind} needs a cluster")
        if kind == CLUSTER_NODE_KILL and cluster is not None:
            outcome = await inject_cluster_node_kill(platform, tl, cluster, cfg)
        elif kind == CLUSTER_PARTITION and cluster is not None:
            outcome = await inject_cluster_partition(platform, tl, cluster, cfg)
        elif kind == CLUSTER_ROLLING_RESTART and cluster is not None:
            outcome = await inject_cluster_rolling_restart(platform, tl, cluster, cfg)
        elif kind == WORKER_KILLS:
            outcome = await inject_worker_kills(platform, tl, sup)
        elif kind == RABBITMQ_RESTART:
            outcome = await inject_rabbitmq_restart(platform, tl, cfg.broker_down_s, cfg.recovery_timeout_s)
        elif kind == POSTGRESQL_RESTART:
            outcome = await inject_postgresql_restart(platform, tl, cfg.postgres_down_s, cfg.recovery_timeout_s)
        elif kind == STAMPING_KILL_AFTER_SIGN:
            outcome = await inject_stamping_kill_after_sign(platform, tl, sup, cfg.failpoint_wait_s)
        else:
            raise ValueError(f"unknown injection {kind!r}")
    except Exception as exc:
        tl.note(f"injection {kind} failed: {exc!r}")
        outcome = {"ok": False, "error": repr(exc)}
    return {"kind": kind, "what": INJECTIONS.get(kind, kind), "at_s": round(started, 1),
            "recovered_at_s": round(tl.now(), 1), **outcome}


def format_report(report: dict[str, Any]) -> str:
    """The injections and the checks as plain-text tables; a run in segments (a cluster's): per
    segment, what was injected, what the broker reported and what was checked after it."""
    lines: list[str] = []
    segments = report.get("segments")
    if segments is not None:
        planned = len(segments) + len(report.get("segments_skipped", []))
        for n, s in enumerate(segments, 1):
            name = s["fault"] or "no fault"
            last = s["first_applicant"] + s["applicants"] - 1
            lines += ["", f"=== segment {n}/{planned}: {name}: applicants #{s['first_applicant']}..#{last} "
                          f"arriving from {s['started_at_s']}s over {s['arrival_s']}s ==="]
            lines += _injection_lines([s["injection"]] if s["injection"] else [])
            lines += _load_lines(s["load"])
            lines += _check_lines(s["checks"], f"checked after {name} (from the databases and the broker):")
            lines.append(f"  after {name}: {s['violations']} invariant(s) violated")
        for kind in report.get("segments_skipped", []):
            lines += ["", f"=== segment skipped: {kind or 'no fault'} (the previous one did not reach quiescence) ==="]
        lines += ["", "=== the whole run ==="]
        lines += _load_lines(report.get("load", {}))
    else:
        lines += _injection_lines(report.get("injections", []))
        lines += _load_lines(report.get("load", {}))
        lines += _check_lines(report.get("checks", []), "checked (from the databases and the broker):")
    for m in report.get("parked", [])[:20]:
        lines.append(f"  parked: {m['queue']} {m['type']} {m['correlation_id']}: {m['reason']}")
    lines.append("")
    verdict = "OK" if report.get("ok") else "VIOLATIONS"
    if report.get("cluster"):
        lines.append(f"cluster: {', '.join(report['cluster']['nodes'])}; partition by {report['cluster']['partition']}")
    if segments is not None:
        after = "; ".join(f"after {s['fault'] or 'no fault'}: {s['violations']}" for s in segments)
        skipped = f", {len(report['segments_skipped'])} segment(s) skipped" if report.get("segments_skipped") else ""
        lines.append(f"{verdict}: {report.get('violations', '?')} invariant(s) violated over {len(segments)} "
                     f"segment(s), checked after each fault ({after}){skipped}; "
                     f"servers after the run: {report.get('servers_after')}")
    else:
        lines.append(f"{verdict}: {report.get('violations', '?')} invariant(s) violated; "
                     f"servers after the run: {report.get('servers_after')}")
    return "\n".join(lines)


def _injection_lines(injections: list[dict[str, Any]]) -> list[str]:
    lines = ["", "injected:", f"  {'at':>7}  {'until':>7}  {'ok':<4} what"]
    for i in injections:
        extra = ""
        if i["kind"] == STAMPING_KILL_AFTER_SIGN:
            extra = " (triggered)" if i.get("triggered") else " (not triggered: no job signed)"
        elif i["kind"] in (RABBITMQ_RESTART, POSTGRESQL_RESTART):
            extra = f" ({i.get('down_s')}s down)"
        elif i["kind"] == CLUSTER_NODE_KILL:
            extra = (f" ({i.get('target')}, {i.get('down_s')}s down; while down: {i.get('while_down')}; "
                     f"client connections before {i.get('connections_before')}, after {i.get('connections_after')})")
        elif i["kind"] == CLUSTER_PARTITION:
            extra = (f" ({i.get('target')}, {i.get('how')}, {i.get('partition_s')}s; the majority saw: "
                     f"{i.get('during')}; client connections after {i.get('connections_after')})"
                     + (f"; {i['remedy']}" if i.get("remedy") else ""))
        elif i["kind"] == CLUSTER_ROLLING_RESTART:
            steps = [s["node"] + (" ok" if s["healthy"] else " NOT healthy") for s in i.get("steps", [])]
            extra = f" ({'; '.join(steps)})"
        if i.get("after"):
            extra += f"\n  {'':>7}  {'':>7}  {'':<4} broker after: {i['after']}"
        lines.append(f"  {i['at_s']:>6}s  {i['recovered_at_s']:>6}s  {'ok' if i.get('ok') else 'FAIL':<4} "
                     f"{i['what']}{extra}" + (f" error: {i['error']}" if i.get("error") else ""))
    return lines


def _load_lines(load: dict[str, Any]) -> list[str]:
    if not load:
        return []
    lines = ["", f"load: {load['applicants']} applicants in {load['seconds']}s; final stage "
                 f"{load['final_stage']}; stampings {load['stampings_seen']}; duplicate callbacks "
                 f"{load['duplicate_callbacks']}"]
    odd = {k: v for k, v in load["answers"].items()
           if not any(k.endswith(f" {c}") for c in ("200", "201", "202", SNAP_PAID, "2007300"))}
    if odd:
        lines.append(f"  answers other than success: {odd}")
    return lines


def _check_lines(checks: list[dict[str, Any]], title: str) -> list[str]:
    width = max((len(c["name"]) for c in checks), default=10)
    lines = ["", title, f"  {'check':<{width}}  {'result':<6} detail"]
    for c in checks:
        lines.append(f"  {c['name']:<{width}}  {c['status']:<6} {c['detail']}")
        lines += [f"  {'':<{width}}         - {v}" for v in c["violations"][:10]]
    return lines
