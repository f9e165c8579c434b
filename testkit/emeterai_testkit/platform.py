"""The one platform launcher: services as real processes (api, worker, relay) for cross-service
tests (``tests/conftest.py``), ``make chaos`` (``emeterai_testkit.chaos``) and the rush (``bench.rush``).

Each process gets its service's settings through the environment, exactly as in production;
tests can SIGKILL, SIGTERM and restart any of them.

- ``platform_settings``: the services' settings for a run (a work directory for secrets and the
  partner bank file, common and per-service overrides);
- ``new_bank``/``dev_bank``: the partner bank the simulator plays (generated, or ``make setup``'s);
- ``ingress``: the browser's one origin (nginx, as ``make run`` starts it) in front of them;
- ``Platform``: the processes; ``launch`` starts them (fresh databases and queues first, unless
  ``fresh=False``; order's processes first, they create the token keys; then minting stock);
  ``launched`` does it as an ``async with`` that stops them on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from emeterai_shared.config import ServiceSettings
from emeterai_shared.runtime import ServiceDefinition

from emeterai_testkit import forked
from emeterai_testkit.fixtures import REPO_ROOT, free_port, reset_service, settings_env, settings_for

if TYPE_CHECKING:
    from payment_service.adapters.banksim import BankSimulator

SERVICES = ("order", "payment", "minting", "stamping")
KINDS = ("api", "worker", "relay")
Log = Callable[[str], None]
Services = Sequence[tuple[ServiceDefinition[Any], ServiceSettings]]


def definitions() -> dict[str, tuple[ServiceDefinition[Any], type[ServiceSettings]]]:
    """The four services: name -> (definition, settings class), in start order."""
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


@dataclass(frozen=True)
class DevBank:
    """The partner bank the simulator plays: its ``PAYMENT_PARTNERS_FILE`` entry and private key."""

    config: dict[str, str]
    private_pem: bytes

    @property
    def partner_service_id(self) -> str:
        return self.config["partner_service_id"]

    def customer_no(self, virtual_account_no: str) -> str:
        """The customer number of one of this bank's virtual accounts."""
        prefix = self.partner_service_id
        if not virtual_account_no.startswith(prefix):
            raise ValueError(f"VA {virtual_account_no} is not of bank {prefix}")
        return virtual_account_no[len(prefix):]

    def simulator(self, payment_url: str, session: aiohttp.ClientSession) -> BankSimulator:
        from payment_service.adapters.banksim import BankSimulator

        return BankSimulator.from_config(payment_url, self.config, self.private_pem, session=session)


def new_bank(workdir: Path, partner_service_id: str = "88908") -> DevBank:
    """A generated bank, written as ``workdir/banks.json`` (what ``platform_settings`` points
    the payment service's ``partners_file`` at)."""
    from payment_service.adapters.banks import generate_bank_keys, new_bank_config

    workdir.mkdir(parents=True, exist_ok=True)
    private_pem, public_pem = generate_bank_keys()
    bank = DevBank(new_bank_config(public_pem, partner_service_id=partner_service_id), private_pem)
    (workdir / "banks.json").write_text(json.dumps({"banks": [bank.config]}))
    return bank


def dev_bank(directory: Path) -> DevBank:
    """The bank ``python -m payment_service dev-bank`` (``make setup``) keeps in ``directory``."""
    from payment_service.adapters.banks import load_bank

    return DevBank(*load_bank(directory))


def platform_settings(names: Sequence[str], workdir: Path, *, common: Mapping[str, Any] | None = None,
                      overrides: Mapping[str, Mapping[str, Any]] | None = None) -> list[
                          tuple[ServiceDefinition[Any], ServiceSettings]]:
    """Test settings (``settings_for``) of the services ``names``: secrets in ``workdir/secrets``,
    payment's partners in ``workdir/banks.json`` (``new_bank``), then ``common`` and each
    service's ``overrides``."""
    defs = definitions()
    out: list[tuple[ServiceDefinition[Any], ServiceSettings]] = []
    for name in names:
        defn, cls = defs[name]
        extra: dict[str, Any] = {"partners_file": str(workdir / "banks.json")} if name == "payment" else {}
        extra.update(common or {})
        extra.update((overrides or {}).get(name, {}))
        out.append((defn, settings_for(cls, secrets_dir=str(workdir / "secrets"), **extra)))
    return out


@dataclass
class Proc:
    service: str
    kind: str
    env: dict[str, str]
    port: int
    log_path: Path
    popen: subprocess.Popen[bytes] | forked.Forked | None = None

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        if forked.enabled():  # in tests: forked from a process that has imported the services
            self.popen = forked.start(f"{self.service}_service", self.kind, {**self.env, **(extra_env or {})},
                                      REPO_ROOT, self.log_path)
            return
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", f"{self.service}_service", self.kind],
            env={**self.env, **(extra_env or {})}, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.popen is not None
            self.popen.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(10)


_NOTABLE = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback", "Error:", '"level": "WARNING"', '"level": "ERROR"')

LIVE: list[Platform] = []
"""The platforms started by `launched` and not stopped yet (a failed test's report reads their logs)."""


@dataclass
class Platform:
    """A set of services, each as api + worker + relay processes."""

    logs: Path
    settings: dict[str, ServiceSettings] = field(default_factory=dict)
    definitions: dict[str, ServiceDefinition[Any]] = field(default_factory=dict)
    procs: dict[tuple[str, str], Proc] = field(default_factory=dict)
    bank: DevBank | None = None
    """The partner bank the simulator plays against this platform."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment of every process added afterwards (e.g. ``OTEL_EXPORTER_OTLP_ENDPOINT``)."""
    start_timeout_s: float = 60.0
    """How long a started process may take to answer ``/readyz``."""

    def add(self, defn: ServiceDefinition[Any], settings: ServiceSettings) -> None:
        self.settings[defn.name] = settings
        self.definitions[defn.name] = defn
        env = {**settings_env(settings), **self.env}
        ports = {"api": settings.http_port, "worker": settings.worker_metrics_port,
                 "relay": settings.relay_metrics_port}
        for kind in KINDS:
            self.procs[(defn.name, kind)] = Proc(defn.name, kind, env, ports[kind],
                                                 self.logs / f"{defn.name}-{kind}.log")

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.settings[service].http_port}"

    def diagnosis(self, lines: int = 25) -> str:
        """For a failed test's report: which processes are not running, and each log's last warnings,
        errors and tracebacks (what a flake on a slower machine leaves to read)."""
        out = [f"platform {self.logs}"]
        for p in self.procs.values():
            state = "running" if p.alive else f"NOT running (exit {p.popen.poll() if p.popen else 'never started'})"
            out.append(f"  {p.service}-{p.kind}: {state}")
        for p in self.procs.values():
            try:
                text = p.log_path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            notable = [line for line in text if any(w in line for w in _NOTABLE)]
            if notable:
                out.append(f"--- {p.log_path.name}: last {min(lines, len(notable))} of {len(notable)} notable lines")
                out += [line[:400] for line in notable[-lines:]]
        return "\n".join(out)

    def urls(self) -> dict[str, str]:
        return {service: self.url(service) for service in self.settings}

    def ports(self) -> dict[int, str]:
        """port -> ``<svc>-<kind>`` of every api, worker and relay."""
        return {p.port: f"{p.service}-{p.kind}" for p in self.procs.values()}

    def metrics_urls(self) -> dict[str, str]:
        """``<svc>-<kind>`` -> its /metrics URL (workers and relays serve theirs on their own ports)."""
        return {f"{p.service}-{p.kind}": f"http://127.0.0.1:{p.port}/metrics" for p in self.procs.values()}

    def customer_no(self, virtual_account_no: str) -> str:
        """The customer number of one of the platform's bank's virtual accounts."""
        assert self.bank is not None, "this platform has no partner bank"
        return self.bank.customer_no(virtual_account_no)

    def simulator(self, session: aiohttp.ClientSession) -> BankSimulator:
        """The bank simulator, calling this platform's payment service."""
        assert self.bank is not None, "this platform has no partner bank"
        return self.bank.simulator(self.url("payment"), session)

    async def command(self, service: str, *args: str) -> str:
        """Run an operator command of ``service`` as a real process with the platform's settings;
        its output (raises when it fails)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"{service}_service", *args, env=settings_env(self.settings[service]),
            cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{service} {' '.join(args)} failed ({proc.returncode}):\n{out.decode()}")
        return out.decode()

    def proc(self, service: str, kind: str) -> Proc:
        return self.procs[(service, kind)]

    async def start(self, *which: tuple[str, str], extra_env: dict[str, str] | None = None) -> None:
        targets = [self.procs[w] for w in which] if which else list(self.procs.values())
        for p in targets:
            p.start(extra_env)
        await asyncio.gather(*(wait_ready(p, self.start_timeout_s) for p in targets))

    async def restart(self, service: str, kind: str, extra_env: dict[str, str] | None = None) -> None:
        p = self.proc(service, kind)
        p.kill()
        await self.start((service, kind), extra_env=extra_env)

    def stop(self, grace_s: float = 15) -> None:
        """SIGTERM to every process, SIGKILL to those still running after ``grace_s``."""
        for p in self.procs.values():
            p.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in self.procs.values():
            if p.popen is None:
                continue
            try:
                p.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()


async def wait_ready(p: Proc, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if not p.alive:
                raise RuntimeError(f"{p.service} {p.kind} exited: see {p.log_path}\n"
                                   + p.log_path.read_text()[-3000:])
            try:
                async with session.get(f"http://127.0.0.1:{p.port}/readyz",
                                       timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{p.service} {p.kind} not ready after {timeout_s}s: see {p.log_path}")


async def prepare(services: Services) -> None:
    """Fresh databases and queues for every service before the processes start (the services'
    own databases and queues: reset side by side)."""
    await asyncio.gather(*(reset_service(defn, settings) for defn, settings in services))


def platform_of(services: Services, logs: Path, *, bank: DevBank | None = None,
                process_env: Mapping[str, str] | None = None, start_timeout_s: float = 60.0) -> Platform:
    """The processes of ``services`` (none started yet)."""
    logs.mkdir(parents=True, exist_ok=True)
    p = Platform(logs=logs, bank=bank, env=dict(process_env or {}), start_timeout_s=start_timeout_s)
    for defn, settings in services:
        p.add(defn, settings)
    return p


async def launch(p: Platform, *, fresh: bool = True, stock: int | None = None, ensure_stock: bool = False,
                 log: Log | None = None) -> None:
    """Start every process of ``p``: on fresh databases and queues (``fresh``), order's processes
    first (they create the token keys), then the others; then ``stock`` serials added to minting
    (``ensure_stock``: topped up to at least ``stock``)."""
    if fresh:
        await prepare([(p.definitions[name], settings) for name, settings in p.settings.items()])
    names = list(p.settings)
    first = [n for n in names if n == "order"]
    for group in (first, [n for n in names if n not in first]):
        if group:
            await p.start(*((name, kind) for name in group for kind in KINDS))
    if stock:
        if ensure_stock:
            await p.command("minting", "stock", "ensure", "--min", str(stock))
        else:
            await p.command("minting", "stock", "add", "--count", str(stock))
    if log is not None:
        log(f"platform: {len(p.procs)} processes ready (logs in {p.logs})"
            + (f", minting stock {'ensured at ≥' if ensure_stock else '+'} {stock} serials" if stock else ""))


@contextlib.asynccontextmanager
async def launched(services: Services, logs: Path, *, bank: DevBank | None = None,
                   process_env: Mapping[str, str] | None = None, start_timeout_s: float = 60.0,
                   fresh: bool = True, stock: int | None = None, ensure_stock: bool = False,
                   log: Log | None = None) -> AsyncIterator[Platform]:
    """``async with launched(...) as p``: ``platform_of`` + ``launch``; every process stopped on exit."""
    p = platform_of(services, logs, bank=bank, process_env=process_env, start_timeout_s=start_timeout_s)
    LIVE.append(p)
    try:
        await launch(p, fresh=fresh, stock=stock, ensure_stock=ensure_stock, log=log)
        yield p
    finally:
        LIVE.remove(p)
        p.stop()


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)


@contextlib.asynccontextmanager
async def ingress(p: Platform, workdir: Path, *, web_root: Path | None = None, dev_bank: str | None = None,
                  dev_acquirer: str | None = None, start_timeout_s: float = 30.0) -> AsyncIterator[str]:
    """``async with ingress(p, dir) as url``: the browser's one origin in front of ``p``'s apis, as
    ``make run`` starts it (``scripts/ingress``: Debian's nginx with ``compose/ingress``'s rules),
    on a free port; stopped on exit. The services trust it only if their settings say so
    (``trusted_proxies``). ``dev_bank``: the address of the development bank's pay control
    (``payment_service bank serve``), routed at ``/dev/bank/`` as under ``make run``; ``dev_acquirer``:
    the QRIS acquirer simulator's, at ``/dev/acquirer/``."""
    port = free_port()
    env = {"PATH": f"/usr/sbin:/usr/bin:/bin:{Path(sys.executable).parent}",
           "INGRESS_PREFIX": str(workdir / "ingress"), "INGRESS_LISTEN": f"127.0.0.1:{port}",
           "WEB_ROOT": str(web_root or REPO_ROOT / "web" / "dist"),
           "DEV_BANK_ADDR": dev_bank or "127.0.0.1:9", "DEV_ACQUIRER_ADDR": dev_acquirer or "127.0.0.1:9"}
    for service in SERVICES:
        if service in p.settings:
            env[f"{service.upper()}_ADDR"] = f"127.0.0.1:{p.settings[service].http_port}"
    proc = _spawn([str(REPO_ROOT / "scripts" / "ingress")], env, p.logs / "ingress.log")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        async with aiohttp.ClientSession() as session:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the ingress exited ({proc.returncode}): "
                                       + (p.logs / "ingress.log").read_text()[-3000:])
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url + "/", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the ingress did not answer within {start_timeout_s} s")
                await asyncio.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
