"""Fault injection during a small rush: ``make chaos`` (``bench/chaos.py``) and ``tests/test_chaos.py``.

One run, on its own namespace (databases ``emeterai_<ns>_<svc>``, vhost ``emeterai_<ns>``, never
``make run``'s data):

1. the four services' api, worker and relay start as real processes (``Platform``), with one
   generated partner bank and minting stock for every applicant;
2. applicants arrive over ``arrival_s``: each registers, orders 2 stamps, the bank simulator pays
   the bill (a share of the callbacks are sent twice: a re-sent advice and an exact replay), then
   uploads 2 generated PDFs once the stamping quota shows the serials and waits until both are
   DONE or FAILED. 429/503 are retried after ``Retry-After``; 5xx and lost connections (the
   faults) after a capped backoff, with the same idempotency keys (and, at the bank, the same
   ``paymentRequestId`` re-sent as an advice);
3. meanwhile, on a schedule and with a printed timeline, faults are injected: SIGKILL of one
   worker of every service (restarted at once), RabbitMQ stopped and started
   (``rabbitmqctl stop_app``/``start_app``), PostgreSQL stopped and started (``pg_ctlcluster``),
   and the stamping worker restarted with ``EMETERAI_FAILPOINTS=stamping.after_sign=kill`` so that
   it SIGKILLs itself between a signature and its commit (then restarted without it). A process
   that dies by itself is recorded and restarted, as a supervisor would;
4. after the load: quiescence (every outbox published, every queue of the vhost empty, no
   stamping job or order in flight, stable over a few polls);
5. checks, from the databases and the broker (not from the load's own counters): see
   ``evaluate``; plus ``front_doors`` from the answers the load got (no 5xx but 503, no 429/503
   without ``Retry-After``). ``invariant`` checks fail the run; ``observation`` rows are reported.
   A captured payment whose only pending step is a parked message is lost (``stranding``), and
   does not hold quiescence up as "in transition".

Restarting RabbitMQ or PostgreSQL disturbs every other user of this machine's servers: callers hold
the exclusive broker lock (``fixtures.LOCK_FILE``; ``exclusive_servers`` here, the
``broker_exclusive`` fixture in tests), and ``ensure_servers_running`` always leaves both up.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from emeterai_shared.config import ServiceSettings
from emeterai_shared.db import connect_with_retry
from emeterai_shared.failpoints import ENV as FAILPOINTS_ENV
from emeterai_shared.messaging import connect
from emeterai_shared.messaging.parking import list_parked
from emeterai_shared.runtime import Context, ServiceDefinition
from emeterai_shared.stranding import (
    ParkedWork,
    live_outbox_orders,
    parked_from_queues,
    parked_in_queues,
    parked_outbox,
    stranded,
)

from emeterai_testkit.fixtures import (
    AMQP_BASE,
    LOCK_FILE,
    PG_BASE,
    broker_answers,
    require_restart_headroom,
    settings_env,
    settings_for,
    start_rabbitmq_node,
)
from emeterai_testkit.platform import Platform, Proc, prepare, wait_ready

SERVICES = ("order", "payment", "minting", "stamping")
KINDS = ("api", "worker", "relay")
Log = Callable[[str], None]

WORKER_KILLS = "worker_kills"
RABBITMQ_RESTART = "rabbitmq_restart"
POSTGRESQL_RESTART = "postgresql_restart"
STAMPING_KILL_AFTER_SIGN = "stamping_kill_after_sign"
INJECTIONS = {
    WORKER_KILLS: "SIGKILL one worker of every service, restart it",
    RABBITMQ_RESTART: "RabbitMQ stop_app, down a few seconds, start_app",
    POSTGRESQL_RESTART: "PostgreSQL stopped (fast), down a few seconds, started",
    STAMPING_KILL_AFTER_SIGN: "stamping worker SIGKILLs itself after signing, before its commit",
}
TRANSITIONAL_ORDER_STATES = ("PAID", "REFUND_PENDING")
SNAP_PAID = "2002500"
SNAP_DUPLICATE_EXTERNAL_ID = "4042518"



def _default_retry_delays() -> list[int]:
    """The services' own default delay tiers (``ServiceSettings.retry_delays_ms``)."""
    delays: list[int] = ServiceSettings.model_fields["retry_delays_ms"].get_default(call_default_factory=True)
    return list(delays)


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


def _definitions() -> dict[str, tuple[ServiceDefinition, type[ServiceSettings]]]:
    from minting_service.bootstrap import SERVICE as MINTING
    from minting_service.config import MintingSettings
    from order_service.bootstrap import SERVICE as ORDER
    from order_service.config import OrderSettings
    from payment_service.bootstrap import SERVICE as PAYMENT
    from payment_service.config import PaymentSettings
    from stamping_service.bootstrap import SERVICE as STAMPING
    from stamping_service.config import StampingSettings

    return {"order": (ORDER, OrderSettings), "payment": (PAYMENT, PaymentSettings),
            "minting": (MINTING, MintingSettings), "stamping": (STAMPING, StampingSettings)}


@contextlib.asynccontextmanager
async def chaos_platform(cfg: ChaosConfig, workdir: Path, *, amqp_url: str | None = None,
                         log: Log = print) -> AsyncIterator[Platform]:
    """The four services on fresh databases of ``cfg.namespace`` and its vhost (which the caller
    made fresh), with a generated bank and stock for every applicant; stopped on exit."""
    from payment_service.snap.banksim import generate_bank_keys, new_bank_config

    workdir.mkdir(parents=True, exist_ok=True)
    private_pem, public_pem = generate_bank_keys()
    bank = new_bank_config(public_pem, partner_service_id="88908")
    (workdir / "banks.json").write_text(json.dumps({"banks": [bank]}))
    amqp_url = amqp_url or f"{AMQP_BASE}/{cfg.vhost}"
    defs = _definitions()
    common: dict[str, Any] = {"secrets_dir": str(workdir / "secrets"), "amqp_url": amqp_url,
                              "retry_delays_ms": list(cfg.retry_delays_ms)}
    extra: dict[str, dict[str, Any]] = {"payment": {"partners_file": str(workdir / "banks.json")}}
    settings = {svc: settings_for(cls, database_name=cfg.database(svc), **common, **extra.get(svc, {}))
                for svc, (_, cls) in defs.items()}
    await prepare([defs[s][0] for s in SERVICES], [settings[s] for s in SERVICES])
    p = Platform(logs=workdir)
    for svc in SERVICES:
        p.add(defs[svc][0], settings[svc])
    p.extras.update(bank=bank, bank_key=private_pem)
    try:
        await start(p, ("order", "api"), ("order", "worker"), ("order", "relay"))  # creates the token keys
        await start(p, *((s, k) for s in SERVICES[1:] for k in KINDS))
        stock = cfg.applicants * cfg.stamps_per_applicant + 50
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "minting_service", "stock", "add", "--count", str(stock)],
            env=settings_env(settings["minting"]), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"minting stock add failed: {done.stdout}{done.stderr}")
        log(f"platform: 12 processes ready on namespace {cfg.namespace} (logs in {workdir}), {stock} serials in stock")
        yield p
    finally:
        p.stop()


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


START_TIMEOUT_S = 180.0
"""Starting processes on a loaded 2-core machine can take longer than ``Platform.start``'s minute."""


async def start(platform: Platform, *keys: tuple[str, str], extra_env: dict[str, str] | None = None) -> None:
    procs = [platform.proc(*k) for k in keys]
    for p in procs:
        p.start(extra_env)
    await asyncio.gather(*(wait_ready(p, START_TIMEOUT_S) for p in procs))


async def restart(platform: Platform, key: tuple[str, str], extra_env: dict[str, str] | None = None) -> None:
    platform.proc(*key).kill()
    await start(platform, key, extra_env=extra_env)


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
        await start(platform, *keys)
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
        await restart(platform, key, extra_env={FAILPOINTS_ENV: "stamping.after_sign=kill"})
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
        await restart(platform, key)
    tl.note("stamping worker restarted without the failpoint and ready")
    return {"triggered": triggered, "exit_code": code, "ok": (code == -9) if triggered else True}


# --- the load: applicants through the public interfaces ------------------------------------------------------


class GaveUp(Exception):
    pass


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
    def __init__(self, platform: Platform, cfg: ChaosConfig, tl: Timeline):
        from emeterai_testkit.documents import sample_pdf

        self.platform = platform
        self.cfg = cfg
        self.tl = tl
        self.answers: Counter[str] = Counter()
        self.unhinted: Counter[str] = Counter()
        """429/503 answers of the platform's front doors that came without ``Retry-After``."""
        self.document = sample_pdf(3)
        self.applicants = [Applicant(i, round(i * cfg.arrival_s / max(1, cfg.applicants), 2))
                           for i in range(cfg.applicants)]
        self._token_lock = asyncio.Lock()
        self.seconds = 0.0

    async def run(self) -> None:
        from payment_service.snap.banksim import BankSimulator

        started = time.monotonic()
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
            self.session = session
            self.bank = BankSimulator.from_config(self.platform.url("payment"), self.platform.extras["bank"],
                                                  self.platform.extras["bank_key"], session=session)
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
        order_url, stamping_url = self.platform.url("order"), self.platform.url("stamping")
        a.stage = "register"
        status, body = await self._call("account", "POST", f"{order_url}/v1/accounts", deadline, lambda: {
            "json": {"name": f"Pelamar {a.index}", "phone": f"+62812{a.index:08d}"},
            "headers": {"Idempotency-Key": f"chaos-account-{a.index}-{self.cfg.namespace}"}})
        if status != 201:
            raise GaveUp(f"register answered {status}: {body}")
        auth = {"Authorization": f"Bearer {body['token']}"}
        a.stage = "order"
        order_key = str(uuid.uuid4())
        status, body = await self._call("order", "POST", f"{order_url}/v1/orders", deadline, lambda: {
            "json": {"quantity": self.cfg.stamps_per_applicant}, "headers": {**auth, "Idempotency-Key": order_key}})
        if status != 202:
            raise GaveUp(f"order answered {status}: {body}")
        a.order_id = str(body["order_id"])
        a.stage = "bill"
        order = await self._poll("order_get", f"{order_url}/v1/orders/{a.order_id}", auth, deadline,
                                 lambda o: o.get("payment") is not None or o.get("status") != "AWAITING_PAYMENT")
        if order.get("payment") is None:
            a.order_status = order.get("status")
            raise GaveUp(f"order {a.order_status} without a bill: {order.get('failure_reason')}")
        a.stage = "pay"
        if not await self._pay(a, order["payment"], deadline):
            return
        a.stage = "fulfil"
        order = await self._poll("order_get", f"{order_url}/v1/orders/{a.order_id}", auth, deadline,
                                 lambda o: o.get("status") in ("FULFILLED", "REFUNDED", "FAILED", "EXPIRED"))
        a.order_status = order["status"]
        if a.order_status != "FULFILLED":
            a.stage = a.order_status.lower()
            return
        a.serials = list(order["serials"])
        a.stage = "quota"
        await self._poll("quota", f"{stamping_url}/v1/quota", auth, deadline,
                         lambda q: set(a.serials) <= set(q.get("serials_available", [])))
        a.stage = "upload"
        ids = []
        for n in range(self.cfg.documents_per_applicant):
            key = str(uuid.uuid4())

            def upload(n: int = n, key: str = key) -> dict[str, Any]:
                return {"data": self._form(n), "headers": {**auth, "Idempotency-Key": key}}

            status, body = await self._call("upload", "POST", f"{stamping_url}/v1/stampings", deadline, upload)
            if status == 202:
                ids.append(str(body["stamping_id"]))
            else:
                a.refusals.append(f"upload {status} {body.get('error', {}).get('code')}")
        a.stage = "stamp"
        for sid in ids:
            job = await self._poll("stamping_get", f"{stamping_url}/v1/stampings/{sid}", auth, deadline,
                                   lambda j: j.get("status") in ("DONE", "FAILED"))
            a.stampings[sid] = job["status"]
        a.stage = "done"

    def _form(self, n: int) -> aiohttp.FormData:
        form = aiohttp.FormData()
        form.add_field("file", self.document, filename=f"lamaran-{n}.pdf", content_type="application/pdf")
        for name, value in (("page", 1 + n % 3), ("x", 72), ("y", 72), ("size", 100), ("reason", "Lamaran CASN")):
            form.add_field(name, str(value))
        return form

    async def _call(self, step: str, method: str, url: str, deadline: float,
                    kwargs: Callable[[], dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        """One request, retried on 429/503 after Retry-After and on 5xx or a lost connection after
        a capped backoff, until ``deadline``; any other answer is returned."""
        backoff = 0.5
        while True:
            if time.monotonic() > deadline:
                raise GaveUp(f"{step}: no answer other than 429/503/5xx before the deadline")
            try:
                async with self.session.request(method, url, **kwargs()) as r:
                    status = r.status
                    retry_after = r.headers.get("Retry-After")
                    text = await r.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.answers[f"{step} {type(exc).__name__}"] += 1
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(5.0, backoff * 2)
                continue
            self.answers[f"{step} {status}"] += 1
            if status in (429, 503) and not retry_after:
                self.unhinted[f"{step} {status}"] += 1
            try:
                body = json.loads(text) if text else {}
            except ValueError:
                body = {"raw": text[:200]}
            if status in (429, 503):
                await asyncio.sleep(_seconds(retry_after, 1.0) + random.uniform(0, 0.5))
                continue
            if status >= 500:
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(5.0, backoff * 2)
                continue
            return status, body if isinstance(body, dict) else {"body": body}

    async def _poll(self, step: str, url: str, auth: dict[str, str], deadline: float,
                    done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:
            status, body = await self._call(step, "GET", url, deadline, lambda: {"headers": auth})
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
        from payment_service.snap.banksim import PAYMENT_PATH

        prefix = self.platform.extras["bank"]["partner_service_id"]
        customer_no = str(bill["virtual_account_no"])[len(prefix):]
        amount = int(bill["amount"])
        prid = uuid.uuid4().hex
        a.payment_request_id = prid
        paid_at = datetime.now(UTC)
        flag = "N"
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


def _seconds(value: str | None, default: float) -> float:
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default


# --- quiescence --------------------------------------------------------------------------------------------


async def queue_depths(vhost: str) -> dict[str, int]:
    """Messages (ready and unacknowledged) of every queue of ``vhost``, from rabbitmqctl."""
    done = await asyncio.to_thread(_run, ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "--no-table-headers",
                                          "name", "messages"], 60)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl list_queues failed: {done.stderr.strip()}")
    depths = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            depths[parts[0]] = int(parts[1])
    return depths


async def _fetch(settings: ServiceSettings, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await connect_with_retry(settings.database_url, timeout_s=30)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        return rows
    finally:
        await conn.close()


OUTBOX_STATS = """SELECT count(*) FILTER (WHERE parked_at IS NULL) AS backlog,
                         count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked,
                         coalesce(round(extract(epoch FROM now() - min(created_at)
                             FILTER (WHERE parked_at IS NULL))), 0)::int AS oldest_s
                  FROM outbox WHERE sent_at IS NULL"""


async def in_flight(platform: Platform, vhost: str) -> dict[str, Any]:
    """What is still moving: outbox backlogs, non-empty queues, unfinished jobs and orders."""
    s = platform.settings
    stats = {svc: (await _fetch(s[svc], OUTBOX_STATS))[0] for svc in SERVICES}
    outbox = {svc: f"{r['backlog']} rows, oldest {r['oldest_s']}s" for svc, r in stats.items() if r["backlog"]}
    depths = await queue_depths(vhost)
    queues = {q: n for q, n in depths.items() if n and not q.endswith(".parking")}
    jobs = (await _fetch(s["stamping"], "SELECT count(*) AS n FROM stampings WHERE status IN ('QUEUED', 'STAMPING')"
                         ))[0]["n"]
    moving = [str(r["id"]) for r in await _fetch(s["order"], "SELECT id FROM orders WHERE status = ANY($1)",
                                                   list(TRANSITIONAL_ORDER_STATES))]
    if moving:  # an order whose only pending step is a parked message is not moving: it is stranded
        parked, live = await parked_work(platform)  # every parking queue: list_queues' counts lag behind
        stuck = stranded(moving, parked, live)
        moving = [o for o in moving if o not in stuck]
    orders = len(moving)
    busy = {k: v for k, v in {"outbox": outbox, "queues": queues,
                              "stamping_jobs_unfinished": jobs, "orders_in_transition": orders}.items() if v}
    return busy


def consumer_queues(platform: Platform) -> list[str]:
    defs = _definitions()
    return [sub.queue for svc in SERVICES
            for sub in defs[svc][0].subscriptions(Context(settings=platform.settings[svc], pool=None))]


async def parked_work(platform: Platform) -> tuple[list[ParkedWork], set[str]]:
    """The money-carrying parked work (outbox rows the relays parked, messages in parking queues)
    and the orders with outbox rows still to publish."""
    parked: list[ParkedWork] = []
    live: set[str] = set()
    for svc in SERVICES:
        conn = await connect_with_retry(platform.settings[svc].database_url, timeout_s=30)
        try:
            parked += await parked_outbox(conn, svc)
            live |= await live_outbox_orders(conn)
        finally:
            await conn.close()
    amqp = await connect(platform.settings["order"].amqp_url, name="chaos-parked")
    try:
        parked += await parked_in_queues(amqp, consumer_queues(platform))
    finally:
        await amqp.close()
    return parked, live


async def wait_quiescent(platform: Platform, vhost: str, tl: Timeline, timeout_s: float,
                         stable_polls: int = 3, interval_s: float = 2.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    stable = 0
    busy: dict[str, Any] = {}
    said = 0.0
    while time.monotonic() < deadline:
        try:
            busy = await in_flight(platform, vhost)
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


# --- the checks --------------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    kind: str = "invariant"
    """``invariant`` (fails the run) or ``observation`` (reported)."""
    violations: list[str] = field(default_factory=list)

    def status(self) -> str:
        return "ok" if self.ok else ("FAIL" if self.kind == "invariant" else "WARN")


async def collect(platform: Platform, vhost: str) -> dict[str, Any]:
    """Everything the checks read, from the four databases and the broker."""
    s = platform.settings
    data: dict[str, Any] = {
        "payments": await _fetch(s["payment"], "SELECT payment_id, order_id, client_id, payment_request_id, amount,"
                                               " late FROM payments"),
        "refunds": await _fetch(s["payment"], "SELECT refund_id, order_id, payment_id, amount, reason FROM refunds"),
        "bills": await _fetch(s["payment"], "SELECT order_id, status FROM bills"),
        "orders": await _fetch(s["order"], "SELECT id, account_id, status, quantity, serials, payment_id, billed_at,"
                                           " failure_reason FROM orders"),
        "order_serials": await _fetch(s["order"], "SELECT sn, order_id FROM order_serials"),
        "serials": await _fetch(s["minting"], "SELECT sn, status, order_id, stamping_id, document_sha256 FROM serials"
                                              " WHERE status <> 'STOCK'"),
        "issuances": await _fetch(s["minting"], "SELECT order_id, account_id, quantity, status, reason FROM issuances"),
        "reuse_attempts": await _fetch(s["minting"], "SELECT sn, stamping_id, found_status FROM reuse_attempts"),
        "stamps": await _fetch(s["stamping"], "SELECT sn, account_id, order_id, status FROM stamps"),
        "stampings": await _fetch(s["stamping"], "SELECT id, account_id, sn, status, error, stamped_sha256, attempts"
                                                 " FROM stampings"),
        "outbox": {svc: dict((await _fetch(s[svc], OUTBOX_STATS))[0]) for svc in SERVICES},
        "queues": await queue_depths(vhost),
    }
    parked: list[dict[str, Any]] = []
    conn = await connect(s["order"].amqp_url, name="chaos-checks")
    try:
        defs = _definitions()
        for svc in SERVICES:
            for sub in defs[svc][0].subscriptions(Context(settings=s[svc], pool=None)):
                for message in await list_parked(conn, sub.queue, limit=1000):
                    parked.append({"service": svc, **message.summary()})
    finally:
        await conn.close()
    data["parked"] = parked
    data["parked_outbox"], data["live_orders"] = [], set()
    for svc in SERVICES:
        conn = await connect_with_retry(s[svc].database_url, timeout_s=30)
        try:
            data["parked_outbox"] += await parked_outbox(conn, svc)
            data["live_orders"] |= await live_outbox_orders(conn)
        finally:
            await conn.close()
    return data


def _ids(rows: list[str], limit: int = 20) -> list[str]:
    return rows[:limit]


def evaluate(data: dict[str, Any], acknowledged: set[str], quiescence: dict[str, Any]) -> list[Check]:
    """The invariants, from what ``collect`` read (``acknowledged``: the paymentRequestIds the bank
    was answered ``2002500`` for)."""
    checks: list[Check] = []
    orders = {r["id"]: r for r in data["orders"]}
    refunds = {r["order_id"]: r for r in data["refunds"]}
    order_serials: dict[uuid.UUID, list[str]] = {}
    for r in data["order_serials"]:
        order_serials.setdefault(r["order_id"], []).append(r["sn"])
    minted = {r["sn"]: r for r in data["serials"]}
    stamps = {r["sn"]: r for r in data["stamps"]}
    stampings = data["stampings"]

    checks.append(Check("quiescence after recovery", bool(quiescence.get("reached")),
                        f"after {quiescence.get('after_s')}s" if quiescence.get("reached")
                        else f"still in flight: {quiescence.get('still_in_flight')}"))

    # every captured payment ends credited (FULFILLED with its serials) or refunded (refund recorded)
    credited = refunded = 0
    bad: list[str] = []
    unresolved: list[str] = []
    for p in data["payments"]:
        o = orders.get(p["order_id"])
        sns = order_serials.get(p["order_id"], [])
        if (o is not None and o["status"] == "FULFILLED" and len(o["serials"]) == o["quantity"]
                and sorted(o["serials"]) == sorted(sns)
                and all(minted.get(sn, {}).get("order_id") == p["order_id"] for sn in sns)):
            credited += 1
        elif p["order_id"] in refunds and refunds[p["order_id"]]["payment_id"] in (p["payment_id"], None):
            refunded += 1
            if o is None or o["status"] != "REFUNDED":
                bad.append(f"order {p['order_id']}: refund recorded but order is {o and o['status']}")
        else:
            unresolved.append(str(p["order_id"]))
            bad.append(f"order {p['order_id']}: payment {p['payment_id']} captured, order "
                       f"{o['status'] if o else 'missing'} with {len(o['serials']) if o else 0} serial(s), "
                       f"{len(sns)} in order_serials, no refund")
    checks.append(Check("every captured payment credited or refunded", not bad,
                        f"{len(data['payments'])} captured: {credited} credited, {refunded} refunded, "
                        f"{len(unresolved)} lost", violations=bad))

    # "pending" never hides parked work: a captured payment whose only pending step is a parked
    # message is lost (nothing moves it until an operator acts), and the check names the message
    parked_money = [*data.get("parked_outbox", []), *parked_from_queues(data["parked"])]
    stuck = stranded(unresolved, parked_money, data.get("live_orders", set()))
    checks.append(Check("no captured payment stranded behind a parked message (counted lost)", not stuck,
                        f"{len(stuck)} captured payment(s) whose only pending step is parked work",
                        violations=[f"order {o}: lost, {'; '.join(w.describe() for w in work)}"
                                    for o, work in stuck.items()]))

    # the bank's acknowledged payments exist (an acknowledged payment we did not record is lost money)
    captured_ids = {p["payment_request_id"] for p in data["payments"]}
    lost = sorted(acknowledged - captured_ids)
    checks.append(Check("every payment the bank got 2002500 for is captured", not lost,
                        f"{len(acknowledged)} acknowledged, {len(captured_ids)} captured",
                        violations=[f"paymentRequestId {x}" for x in lost]))
    per_order = Counter(p["order_id"] for p in data["payments"])
    twice = [f"order {o}: {n} captures" for o, n in per_order.items() if n > 1]
    checks.append(Check("one capture per order (duplicate callbacks absorbed)", not twice,
                        f"{len(per_order)} orders paid", violations=twice))

    # serials: issued once (minting), in one order (order db), used by one DONE stamping
    issued = [r for r in data["serials"] if r["order_id"] is not None]
    by_issuance: Counter[uuid.UUID] = Counter(r["order_id"] for r in issued)
    bad = [f"issuance {i['order_id']}: {by_issuance.get(i['order_id'], 0)} serials for quantity {i['quantity']}"
           for i in data["issuances"] if i["status"] == "ISSUED" and by_issuance.get(i["order_id"], 0) != i["quantity"]]
    bad += [f"serial {r['sn']} carries order {r['order_id']} without an ISSUED issuance" for r in issued
            if r["order_id"] not in {i["order_id"] for i in data["issuances"] if i["status"] == "ISSUED"}]
    checks.append(Check("minting: every serial issued once, to one issuance", not bad,
                        f"{len(issued)} serials issued to {len(by_issuance)} orders", violations=bad))

    in_orders = Counter(sn for o in data["orders"] for sn in o["serials"])
    bad = [f"serial {sn} in {n} orders" for sn, n in in_orders.items() if n > 1]
    bad += [f"serial {sn}: order {oid} in order_serials, minting says {minted.get(sn, {}).get('order_id')}"
            for oid, sns in order_serials.items() for sn in sns if minted.get(sn, {}).get("order_id") != oid]
    checks.append(Check("order db: no serial in two orders, each the one minting issued it to", not bad,
                        f"{len(in_orders)} serials in {sum(1 for o in data['orders'] if o['serials'])} orders",
                        violations=bad))

    done = [j for j in stampings if j["status"] == "DONE"]
    per_sn = Counter(j["sn"] for j in done)
    bad = [f"serial {sn} used by {n} DONE stampings" for sn, n in per_sn.items() if n > 1]
    for j in done:
        m = minted.get(j["sn"])
        if m is None or m["status"] != "STAMPED" or m["stamping_id"] != j["id"] \
                or m["document_sha256"] != j["stamped_sha256"]:
            bad.append(f"stamping {j['id']} DONE with {j['sn']}, minting has "
                       f"{m and (m['status'], str(m['stamping_id']), m['document_sha256'] == j['stamped_sha256'])}")
    stamped_sns = {r["sn"] for r in data["serials"] if r["status"] == "STAMPED"}
    bad += [f"serial {sn} STAMPED in minting without a DONE stamping" for sn in sorted(stamped_sns - set(per_sn))]
    bad += [f"reuse attempt recorded: {r['sn']} by {r['stamping_id']} ({r['found_status']})"
            for r in data["reuse_attempts"]]
    checks.append(Check("no serial used by two DONE stampings; minting STAMPED = DONE (same document)", not bad,
                        f"{len(done)} DONE, {len(stamped_sns)} STAMPED in minting, "
                        f"{len(data['reuse_attempts'])} reuse attempts", violations=bad))

    # every accepted stamping ends DONE, or FAILED with its serial back to UNUSED
    live = {j["sn"]: j for j in stampings if j["status"] != "FAILED"}
    bad = []
    for j in stampings:
        stamp = stamps.get(j["sn"])
        stamp_status = stamp["status"] if stamp else None
        if j["status"] in ("QUEUED", "STAMPING"):
            bad.append(f"stamping {j['id']} still {j['status']} (attempts {j['attempts']})")
        elif j["status"] == "DONE" and stamp_status != "USED":
            bad.append(f"stamping {j['id']} DONE but stamp {j['sn']} is {stamp_status}")
        elif j["status"] == "FAILED" and stamp_status != "UNUSED" and j["sn"] not in live:
            bad.append(f"stamping {j['id']} FAILED ({j['error']}) but stamp {j['sn']} is {stamp_status}")
    bad += [f"stamp {sn} RESERVED without a live job" for sn, st in stamps.items()
            if st["status"] == "RESERVED" and sn not in live]
    failed = [j for j in stampings if j["status"] == "FAILED"]
    checks.append(Check("every accepted stamping DONE, or FAILED with its serial UNUSED again", not bad,
                        f"{len(stampings)} accepted: {len(done)} DONE, {len(failed)} FAILED", violations=bad))

    # the stamping quota learnt every serial minting issued, for the right account
    accounts = {o["id"]: o["account_id"] for o in data["orders"]}
    bad = [f"serial {r['sn']} of order {r['order_id']} missing from stamping's stamps" for r in issued
           if r["sn"] not in stamps]
    bad += [f"stamp {sn} belongs to {st['account_id']}, its order to {accounts.get(st['order_id'])}"
            for sn, st in stamps.items() if accounts.get(st["order_id"]) != st["account_id"]]
    checks.append(Check("stamping quota = serials minting issued, per account", not bad,
                        f"{len(stamps)} stamps known to stamping", violations=bad))

    # parking: reported with reasons; a parked message without one is a violation
    parked = data["parked"]
    reasonless = [f"{m['queue']} {m['message_id']} ({m['type']})" for m in parked
                  if not m.get("reason") or m["reason"] == "unknown"]
    checks.append(Check("nothing parked without a reason", not reasonless,
                        f"{len(parked)} parked message(s)", violations=reasonless))
    checks.append(Check("parking queues empty", not parked, f"{len(parked)} parked message(s)", kind="observation",
                        violations=[f"{m['queue']}: {m['type']} {m['correlation_id']}: {m['reason']}" for m in parked]))

    outbox = data["outbox"]
    bad = [f"{svc}: {v['parked']} parked row(s)" for svc, v in outbox.items() if v["parked"]]
    checks.append(Check("outbox: no parked rows", not bad,
                        ", ".join(f"{svc} {v['parked']}" for svc, v in outbox.items()), violations=bad))
    bad = [f"{svc}: {v['backlog']} unpublished row(s)" for svc, v in outbox.items() if v["backlog"]]
    bad += [f"queue {q}: {n} message(s)" for q, n in sorted(data["queues"].items())
            if n and not q.endswith(".parking")]
    checks.append(Check("outboxes published and queues drained", not bad,
                        f"{len(data['queues'])} queues in the vhost", violations=bad))

    states = Counter(o["status"] for o in data["orders"])
    unbilled = [f"order {o['id']} {o['status']} never billed" for o in data["orders"] if o["billed_at"] is None]
    checks.append(Check("every order got its bill (order.placed handled)", not unbilled,
                        ", ".join(f"{k} {v}" for k, v in sorted(states.items())), kind="observation",
                        violations=unbilled))
    for c in checks:
        c.violations = _ids(c.violations)
    return checks


def counts(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "orders": dict(Counter(o["status"] for o in data["orders"])),
        "payments_captured": len(data["payments"]), "refunds": len(data["refunds"]),
        "serials_issued": sum(1 for r in data["serials"] if r["order_id"] is not None),
        "serials_stamped": sum(1 for r in data["serials"] if r["status"] == "STAMPED"),
        "stampings": dict(Counter(j["status"] for j in data["stampings"])),
        "stampings_attempts_max": max((j["attempts"] for j in data["stampings"]), default=0),
        "stamps": dict(Counter(s["status"] for s in data["stamps"])),
        "parked_messages": len(data["parked"]),
        "outbox": data["outbox"],
    }


# --- the run -----------------------------------------------------------------------------------------------


async def run(cfg: ChaosConfig, workdir: Path, *, amqp_url: str | None = None, log: Log = print) -> dict[str, Any]:
    """Start the platform, run the load with the faults, wait for quiescence, check. The caller
    holds the exclusive server lock and made the vhost fresh."""
    require_tools()
    load_start = os.getloadavg()[0]
    report: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                              "namespace": cfg.namespace, "config": {**asdict(cfg), "vhost": cfg.vhost}}
    injections: list[dict[str, Any]] = []
    try:
        async with chaos_platform(cfg, workdir, amqp_url=amqp_url, log=log) as platform:
            tl = Timeline(log)
            sup = Supervisor(platform, tl)
            stop = asyncio.Event()
            supervising = asyncio.create_task(sup.run(stop))
            load = Load(platform, cfg, tl)
            tl.note(f"load: {cfg.applicants} applicants arriving over {cfg.arrival_s:.0f}s")
            loading = asyncio.create_task(load.run())
            try:
                for fraction, kind in cfg.schedule:
                    await asyncio.sleep(max(0.0, fraction * cfg.arrival_s - tl.now()))
                    injections.append(await _inject(kind, platform, tl, sup, cfg))
                await loading
                tl.note("load finished", **{k: v for k, v in Counter(a.stage for a in load.applicants).items()})
                quiescence = await wait_quiescent(platform, cfg.vhost, tl, cfg.quiesce_timeout_s)
                data = await collect(platform, cfg.vhost)
                acknowledged = {a.payment_request_id for a in load.applicants
                                if a.bank_acknowledged and a.payment_request_id}
                checks = evaluate(data, acknowledged, quiescence)
                checks.append(front_doors(load.answers, load.unhinted))
                if sup.exits:
                    checks.append(Check("no process died by itself", False,
                                        f"{len(sup.exits)} unexpected exit(s), restarted", kind="observation",
                                        violations=[f"{e['process']} code {e['exit_code']} at {e['t_s']}s"
                                                    for e in sup.exits]))
                else:
                    checks.append(Check("no process died by itself", True, "only the injected kills",
                                        kind="observation"))
                report.update(timeline=tl.events, injections=injections, load=load.summary(),
                              quiescence=quiescence, counts=counts(data), parked=data["parked"],
                              process_exits=sup.exits, checks=[asdict(c) | {"status": c.status()} for c in checks])
            finally:
                stop.set()
                await supervising
                if not loading.done():
                    loading.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await loading
    finally:
        servers = await asyncio.to_thread(ensure_servers_running, log)
        report["servers_after"] = servers
        report["loadavg_1m"] = {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)}
    violations = [c for c in report.get("checks", []) if c["kind"] == "invariant" and not c["ok"]]
    report["violations"] = len(violations)
    report["ok"] = "checks" in report and not violations
    return report


async def _inject(kind: str, platform: Platform, tl: Timeline, sup: Supervisor, cfg: ChaosConfig) -> dict[str, Any]:
    started = tl.now()
    try:
        if kind == WORKER_KILLS:
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
    """The injections and the checks as plain-text tables."""
    lines = ["", "injected:", f"  {'at':>7}  {'until':>7}  {'ok':<4} what"]
    for i in report.get("injections", []):
        extra = ""
        if i["kind"] == STAMPING_KILL_AFTER_SIGN:
            extra = " (triggered)" if i.get("triggered") else " (not triggered: no job signed)"
        elif i["kind"] in (RABBITMQ_RESTART, POSTGRESQL_RESTART):
            extra = f" ({i.get('down_s')}s down)"
        lines.append(f"  {i['at_s']:>6}s  {i['recovered_at_s']:>6}s  {'ok' if i.get('ok') else 'FAIL':<4} "
                     f"{i['what']}{extra}" + (f" error: {i['error']}" if i.get("error") else ""))
    load = report.get("load", {})
    if load:
        lines += ["", f"load: {load['applicants']} applicants in {load['seconds']}s; final stage "
                      f"{load['final_stage']}; stampings {load['stampings_seen']}; duplicate callbacks "
                      f"{load['duplicate_callbacks']}"]
        odd = {k: v for k, v in load["answers"].items()
               if not any(k.endswith(f" {c}") for c in ("200", "201", "202", SNAP_PAID, "2007300"))}
        if odd:
            lines.append(f"  answers other than success: {odd}")
    width = max((len(c["name"]) for c in report.get("checks", [])), default=10)
    lines += ["", "checked (from the databases and the broker):", f"  {'check':<{width}}  {'result':<6} detail"]
    for c in report.get("checks", []):
        lines.append(f"  {c['name']:<{width}}  {c['status']:<6} {c['detail']}")
        lines += [f"  {'':<{width}}         - {v}" for v in c["violations"][:10]]
    for m in report.get("parked", [])[:20]:
        lines.append(f"  parked: {m['queue']} {m['type']} {m['correlation_id']}: {m['reason']}")
    lines.append("")
    verdict = "OK" if report.get("ok") else "VIOLATIONS"
    lines.append(f"{verdict}: {report.get('violations', '?')} invariant(s) violated; "
                 f"servers after the run: {report.get('servers_after')}")
    return "\n".join(lines)
