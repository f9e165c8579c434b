"""The platform under the rush: bring it up when it is down, find its processes, sample them.

- ``RushPlatform.up()``: when the four apis answer ``/readyz`` they are used as they are;
  otherwise the Makefile's ``setup`` runs and the test kit's launcher (``emeterai_testkit.
  platform.launch``) starts the api, worker and relay of every service with ``make run``'s
  settings, each process's output in ``var/rush/<svc>-<kind>.log``; ``down()`` stops what
  ``up()`` started (SIGTERM, then wait).
- ``ProcessSampler``: RSS and CPU of every platform process (the api, worker and relay of each
  service, found by the ports they listen on, with their PDF worker processes) and of PostgreSQL
  and RabbitMQ (shared with anything else on the machine), from ``/proc``.
- ``MetricsScraper``: the backlog gauges of every process's ``/metrics`` over time.
- ``RushAcquirer``: the QRIS acquirer the QRIS share pays through. When ``up()`` starts the
  platform, the payment service's partners file is the rush's own (``var/rush/partners.json``:
  ``make setup``'s banks and one acquirer played by ``payment_service.adapters.acquirersim``, a
  real HTTP server run inside the rush's process on a free port, so that ``outage`` can stop it
  (connection refused) and start it again with its QRs kept). A running platform (``make run``)
  keeps its partners file and its ``dev-acquirer`` process (no outage then).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from emeterai_testkit.fixtures import free_port
from emeterai_testkit.platform import Log, Platform, definitions, launch, platform_of
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
LOG_DIR = REPO / "var" / "rush"
PARTNERS_FILE = LOG_DIR / "partners.json"
"""The payment service's partners file when the rush starts the platform (its acquirer is the rush's)."""
SERVERS = {"postgresql": "postgres", "rabbitmq": "beam.smp"}  # label -> process name (comm)
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
START_TIMEOUT_S = 180.0


async def ready(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


class RushPlatform:
    """The four services with ``make run``'s settings: found running, or started here (by the
    test kit's launcher, and then stopped here)."""

    def __init__(self, *, stock_min: int, log: Log = print):
        # every applicant calls from this machine: the per-address limit on sign-in codes is off
        services = [(defn, cls()) for defn, cls in definitions().values()]
        self.run_partners_file = REPO / "var" / "dev-bank" / "banks.json"
        for defn, settings in services:
            settings.db_count_queries = True  # every statement counted: the report's db_queries_per_order
            if hasattr(settings, "otp_client_limit"):
                settings.otp_client_limit = 0
            if defn.name == "payment" and hasattr(settings, "partners_file"):  # make run's file, read in up()
                self.run_partners_file = REPO / settings.partners_file
                settings.partners_file = str(PARTNERS_FILE)
        env = {"EMETERAI_LOG_JSON": os.environ.get("EMETERAI_LOG_JSON", "false")}
        self.platform: Platform = platform_of(services, LOG_DIR, process_env=env, start_timeout_s=START_TIMEOUT_S)
        self.settings = self.platform.settings
        self.stock_min = stock_min
        self.log = log
        self.started_here = False
        self.acquirer: RushAcquirer | None = None

    def api_url(self, service: str) -> str:
        return self.platform.url(service)

    def ports(self) -> dict[int, str]:
        """port -> ``<svc>-<kind>`` of every api, worker and relay."""
        return self.platform.ports()

    def metrics_urls(self) -> dict[str, str]:
        return self.platform.metrics_urls()

    async def apis_ready(self, session: aiohttp.ClientSession) -> bool:
        urls = [f"{self.api_url(s)}/readyz" for s in self.settings]
        return all(await asyncio.gather(*(ready(session, u) for u in urls)))

    async def up(self, session: aiohttp.ClientSession) -> None:
        if await self.apis_ready(session):
            self.log("platform: the four apis answer /readyz: using the running platform")
        else:
            self.log("platform: not running: make setup, then every api, worker and relay "
                     f"(logs in {LOG_DIR.relative_to(REPO)}/)")
            await asyncio.to_thread(self._run, "make", "-s", "setup")
            for old in LOG_DIR.glob("*.log"):
                old.unlink()
            self.acquirer = await RushAcquirer.own(self.run_partners_file, self.api_url("payment"), self.log)
            self.started_here = True
            await launch(self.platform, fresh=False)
            self.log("platform: every api, worker and relay is ready")
        await self.platform.command("minting", "stock", "ensure", "--min", str(self.stock_min))
        self.log(f"platform: minting stock ensured at ≥ {self.stock_min} serials")
        if self.acquirer is None:
            self.acquirer = await RushAcquirer.running(self.run_partners_file, session, self.log)

    def _run(self, *argv: str) -> None:
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def down(self, grace_s: float = 60) -> None:
        """Stop what ``up()`` started: SIGTERM to every process, then wait (SIGKILL after ``grace_s``)."""
        if not self.started_here:
            return
        self.log("platform: stopping the processes started for the rush (SIGTERM)")
        self.platform.stop(grace_s)
        self.started_here = False


# --- the QRIS acquirer -----------------------------------------------------------------------

class RushAcquirer:
    """The QRIS acquirer the rush's QRIS share pays through (``POST /sim/pay`` with the QR's
    content, as a payer's bank app would): the rush's own simulator (``own``: in this process,
    its outage possible) or a running platform's ``dev-acquirer`` (``running``)."""

    def __init__(self, url: str | None, *, sim: Any = None, port: int = 0, log: Log = print,
                 why_none: str = "") -> None:
        self.url = url
        """The simulator's root (``/sim/pay`` under it); None when there is none to pay through."""
        self.sim = sim
        """The in-process ``AcquirerSimulator`` (its QRs, to check every paid QR was captured)."""
        self.port = port
        self.log = log
        self.why_none = why_none
        self._runner: web.AppRunner | None = None
        self.outages: list[dict[str, float]] = []
        """Each outage: monotonic ``start`` (stopped) and ``end`` (answering again)."""

    @classmethod
    async def own(cls, run_partners_file: Path, merchant_url: str, log: Log) -> RushAcquirer:
        """Write the rush's partners file (``make setup``'s banks, a fresh acquirer on a free port)
        and start the simulator playing that acquirer."""
        from payment_service.adapters.acquirersim import AcquirerSimulator, new_acquirer_entry

        port = free_port()
        entry, private_pem = new_acquirer_entry(f"http://127.0.0.1:{port}/snap", acquirer_id="rush-acquirer")
        partners = json.loads(run_partners_file.read_text())
        partners["acquirers"] = [entry]
        PARTNERS_FILE.parent.mkdir(parents=True, exist_ok=True)
        PARTNERS_FILE.write_text(json.dumps(partners, indent=2) + "\n")
        PARTNERS_FILE.chmod(0o600)
        acquirer = cls(f"http://127.0.0.1:{port}", sim=AcquirerSimulator(entry, private_pem, merchant_url),
                       port=port, log=log)
        await acquirer.start()
        log(f"platform: QRIS acquirer simulator on {acquirer.url} (partners file {PARTNERS_FILE.relative_to(REPO)})")
        return acquirer

    @classmethod
    async def running(cls, partners_file: Path, session: aiohttp.ClientSession, log: Log) -> RushAcquirer:
        """The acquirer of a running platform (``make run``'s ``dev-acquirer``), if it answers ``/sim/``."""
        try:
            base = str(json.loads(partners_file.read_text())["acquirers"][0]["base_url"])
        except (OSError, ValueError, KeyError, IndexError):
            return cls(None, log=log, why_none=f"no acquirer in {partners_file}")
        parts = urlsplit(base)
        root = f"{parts.scheme}://{parts.netloc}"
        if not await ready(session, f"{root}/sim/"):
            return cls(None, log=log, why_none=f"the acquirer simulator at {root}/sim/ does not answer")
        log(f"platform: paying QRIS through the running acquirer simulator at {root}")
        return cls(root, log=log)

    @property
    def can_stop(self) -> bool:
        return self.sim is not None

    async def start(self) -> None:
        assert self.sim is not None
        self._runner = await self.sim.start(self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def outage(self, seconds: float) -> None:
        """Unreachable for ``seconds`` (the server stopped: connection refused), then back with
        every QR it knew (the simulator's state is kept)."""
        assert self.can_stop, "only the rush's own acquirer can be stopped"
        start = time.monotonic()
        self.outages.append({"start": start, "end": start})
        self.log(f"acquirer: down for {seconds:g} s (connection refused)")
        await self.stop()
        await asyncio.sleep(max(0.0, start + seconds - time.monotonic()))
        await self.start()
        self.outages[-1]["end"] = time.monotonic()
        self.log("acquirer: back")

    def paid_references(self) -> list[str]:
        """partnerReferenceNo of every QR the simulator saw paid (refunded ones included)."""
        if self.sim is None:
            return []
        return [prn for prn, qr in self.sim.qrs.items() if qr.status in ("00", "04")]


# --- processes -------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[int, float, int, str] | None:
    """(parent pid, CPU seconds, RSS bytes, name) of a process, None when it is gone. One read of
    ``/proc/<pid>/stat`` with ``os`` calls (the sampler reads every process twice a second, in the
    load generator's process: pathlib and a second file for the name cost it twice as much)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        head, _, tail = data.rpartition(b")")
        fields = tail.split()
        return (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS, int(fields[21]) * _PAGE,
                head.partition(b"(")[2].decode(errors="replace"))
    except (OSError, IndexError, ValueError):
        return None


def listening(ports: dict[int, str]) -> dict[int, str]:
    """The processes listening on ``ports`` (port -> label): pid -> label, the topmost process
    when a forked child holds the socket too. Other sessions' copies of the services (tests,
    other benchmarks) run the same command lines on other ports: only these are the platform."""
    inodes: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) > 9 and parts[3] == "0A":  # LISTEN
                    port = int(parts[1].rsplit(":", 1)[1], 16)
                    if port in ports:
                        inodes[f"socket:[{parts[9]}]"] = ports[port]
    holders: dict[int, str] = {}
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        for link in links:
            if link in inodes:
                holders[pid] = inodes[link]
                st = _stat(pid)
                parents[pid] = st[0] if st else 0
                break
    return {pid: label for pid, label in holders.items() if holders.get(parents[pid]) != label}


@dataclass
class Sample:
    at: float
    rss: dict[str, int]           # label -> RSS of the main process (bytes)
    tree_rss: dict[str, int]      # label -> RSS of the main process and its descendants
    cpu: dict[str, float]         # label -> CPU seconds of the tree (servers: every process)
    machine_busy_s: float


def machine_busy_s() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / _TICKS


def sample_processes(roots: dict[int, str]) -> Sample:
    """RSS and CPU of the ``roots`` (pid -> label) with their descendants, and of the servers."""
    parents: dict[int, int] = {}
    stats: dict[int, tuple[float, int]] = {}
    servers: dict[str, list[int]] = defaultdict(list)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        st = _stat(pid)
        if st is None:
            continue
        parents[pid] = st[0]
        stats[pid] = (st[1], st[2])
        if pid not in roots:
            for server, comm in SERVERS.items():
                if st[3] == comm:
                    servers[server].append(pid)
    owner: dict[int, str] = {}
    for pid in stats:
        p, seen = pid, 0
        while p > 1 and seen < 64:
            if p in roots:
                owner[pid] = roots[p]
                break
            p, seen = parents.get(p, 0), seen + 1
    rss: dict[str, int] = {}
    tree: dict[str, int] = defaultdict(int)
    cpu: dict[str, float] = defaultdict(float)
    for pid, label in owner.items():
        tree[label] += stats[pid][1]
        cpu[label] += stats[pid][0]
        if pid in roots:
            rss[label] = rss.get(label, 0) + stats[pid][1]
    for server, pids in servers.items():
        tree[server] = sum(stats[p][1] for p in pids)
        rss[server] = tree[server]
        cpu[server] = sum(stats[p][0] for p in pids)
    cpu["bench"] = time.process_time()
    return Sample(time.monotonic(), rss, dict(tree), dict(cpu), machine_busy_s())


@dataclass
class ProcessSampler:
    """Samples every ``interval_s`` in the background; phases are marked with ``mark``."""

    ports: dict[int, str]
    """port -> ``<svc>-<kind>``: the platform's processes are the ones listening there."""
    interval_s: float = 0.5
    """Half a second: the purchases' saturated window of a 2 000-buyer rush on a fast machine lasts
    under ten seconds (a sample costs the load generator a few milliseconds)."""
    samples: list[Sample] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    roots: dict[int, str] = field(default_factory=dict)

    def _sample(self) -> Sample:
        if len(set(self.roots.values())) < len(set(self.ports.values())) or any(
                not Path(f"/proc/{pid}").exists() for pid in self.roots):
            self.roots = listening(self.ports)  # first time, or a process was restarted
        return sample_processes(self.roots)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.samples.append(await asyncio.to_thread(self._sample))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
        self.samples.append(await asyncio.to_thread(self._sample))

    def memory(self, cap_mb: float) -> dict[str, Any]:
        """Max RSS per process over the run (main process, and with its children), and whether
        every platform process stayed under ``cap_mb`` and did not keep growing to the end."""
        if not self.samples:
            return {}
        labels = sorted({k for s in self.samples for k in s.tree_rss})
        per: dict[str, Any] = {}
        bounded = True
        for label in labels:
            series = [s.tree_rss[label] for s in self.samples if label in s.tree_rss]
            mains = [s.rss[label] for s in self.samples if label in s.rss]
            first, peak, last = series[0], max(series), series[-1]
            half = series[len(series) // 2:]
            peak_first_half = max(series[: max(1, len(series) // 2)])
            # growing: the second half's peak is past the first half's by more than 25 % and 50 MB
            growing = max(half) > peak_first_half * 1.25 and max(half) - peak_first_half > 50 * 2**20
            ok = peak <= cap_mb * 2**20 and not growing
            per[label] = {"max_rss_mb": round(max(mains) / 2**20, 1) if mains else None,
                          "max_tree_rss_mb": round(peak / 2**20, 1), "start_mb": round(first / 2**20, 1),
                          "end_mb": round(last / 2**20, 1)}
            if label not in SERVERS:  # servers: every backend's RSS summed (shared memory counted again)
                bounded = bounded and ok
                per[label]["bounded"] = ok
        return {"cap_mb_per_process": cap_mb, "bounded": bounded, "samples": len(self.samples),
                "rule": "every platform process (with its PDF worker processes) stays under the cap, and its "
                        "second-half peak is not above its first-half peak by more than 25 % and 50 MB",
                "processes": per}

    def cpu_between(self, start: float, end: float) -> dict[str, float]:
        """CPU cores each process kept busy between two monotonic times: each cumulative counter
        read at ``start`` and at ``end`` by linear interpolation between the samples around them
        (clamped to the first and last sample), so that a window of a few seconds is not widened to
        the samples' grid."""
        if len(self.samples) < 2 or end <= start:
            return {}
        times = [s.at for s in self.samples]
        start, end = max(start, times[0]), min(end, times[-1])
        span = end - start
        if span <= 0:
            return {}

        def around(t: float) -> tuple[Sample, Sample, float]:
            """The samples before and after ``t`` and how far ``t`` lies between them (0 to 1)."""
            i = min(max(1, bisect.bisect_left(times, t)), len(times) - 1)
            lo, hi = self.samples[i - 1], self.samples[i]
            return lo, hi, (t - lo.at) / (hi.at - lo.at) if hi.at > lo.at else 0.0

        def read(edge: tuple[Sample, Sample, float], value: Callable[[Sample], float | None]) -> float | None:
            lo, hi, w = edge
            x, y = value(lo), value(hi)
            return None if x is None or y is None else x + (y - x) * w

        a_edge, b_edge = around(start), around(end)
        cores: dict[str, float] = {}
        for key in self.samples[-1].cpu:
            a, b = read(a_edge, lambda s: s.cpu.get(key)), read(b_edge, lambda s: s.cpu.get(key))  # noqa: B023
            if a is not None and b is not None and b >= a:
                cores[key] = round((b - a) / span, 2)
        cores = {k: v for k, v in sorted(cores.items(), key=lambda kv: -kv[1]) if v >= 0.01}
        busy_a, busy_b = read(a_edge, lambda s: s.machine_busy_s), read(b_edge, lambda s: s.machine_busy_s)
        cores["machine_busy"] = round(((busy_b or 0.0) - (busy_a or 0.0)) / span, 2)
        return cores


# --- metrics ---------------------------------------------------------------------------------

KEPT = {"emeterai_queue_depth": "queue", "emeterai_outbox_backlog": "service",
        "emeterai_outbox_oldest_pending_seconds": "service", "emeterai_admission_backlog": "service",
        "emeterai_admission_limit": "service", "emeterai_admission_drain_per_second": "service",
        "emeterai_parked_messages": "queue", "emeterai_http_in_flight": "service"}
HANDLER = "emeterai_handler_seconds"
HTTP = "emeterai_http_request_seconds"
DB_QUERIES = "emeterai_db_queries"
"""The statement counter's family (``emeterai_db_queries_total``, counted when ``db_count_queries`` is on)."""
_READ = {*KEPT, f"{HANDLER}_sum", f"{HANDLER}_count", f"{HTTP}_sum", f"{HTTP}_count", f"{DB_QUERIES}_total"}
"""The samples the scraper reads; most of a /metrics page is histogram buckets, which it does not."""


def _read_only(text: str) -> str:
    """``text`` with the ``# TYPE`` lines and the samples in ``_READ`` only: parsing a dozen whole
    pages took the load generator 18 ms per scrape, these lines 5 (the same samples)."""
    return "\n".join(line for line in text.splitlines()
                     if line.startswith("# TYPE ") or line.split("{", 1)[0].split(" ", 1)[0] in _READ)


@dataclass
class MetricsScraper:
    """Backlog gauges of every process's /metrics, sampled every ``interval_s``."""

    urls: dict[str, str]
    interval_s: float = 3.0
    series: list[tuple[float, dict[str, dict[str, float]]]] = field(default_factory=list)
    handler: dict[str, tuple[float, float]] = field(default_factory=dict)
    http: list[tuple[float, dict[str, tuple[float, float]]]] = field(default_factory=list)
    """(time, "<service> <METHOD> <route>" -> (seconds, requests)) of every api, over time."""
    db_queries: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    """(time, "<service>-<process>" -> statements sent so far) of every process that counts them."""
    failures: int = 0

    async def scrape(self, session: aiohttp.ClientSession) -> None:
        texts = await asyncio.gather(*(self._get(session, u) for u in self.urls.values()))
        gauges: dict[str, dict[str, float]] = defaultdict(dict)
        handler: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        http: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        queries: dict[str, float] = defaultdict(float)
        for text in texts:
            if text is None:
                continue
            for family in text_string_to_metric_families(_read_only(text)):
                if family.name in KEPT:
                    key = KEPT[family.name]
                    for s in family.samples:
                        name = s.labels.get(key, "")
                        # several processes report one queue/service: keep the largest value
                        gauges[family.name][name] = max(gauges[family.name].get(name, 0.0), s.value)
                elif family.name == HANDLER:
                    for s in family.samples:
                        if s.name.endswith("_sum"):
                            handler[s.labels["queue"]][0] += s.value
                        elif s.name.endswith("_count"):
                            handler[s.labels["queue"]][1] += s.value
                elif family.name == HTTP:
                    for s in family.samples:
                        key = f"{s.labels.get('service')} {s.labels.get('method')} {s.labels.get('route')}"
                        if s.name.endswith("_sum"):
                            http[key][0] += s.value
                        elif s.name.endswith("_count"):
                            http[key][1] += s.value
                elif family.name == DB_QUERIES:
                    for s in family.samples:
                        if s.name.endswith("_total"):
                            queries[f"{s.labels.get('service')}-{s.labels.get('process')}"] += s.value
        now = time.monotonic()
        self.series.append((now, dict(gauges)))
        self.http.append((now, {k: (v[0], v[1]) for k, v in http.items()}))
        self.db_queries.append((now, dict(queries)))
        if handler:
            self.handler = {q: (v[0], v[1]) for q, v in handler.items()}

    async def _get(self, session: aiohttp.ClientSession, url: str) -> str | None:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
                if r.status == 200:
                    return await r.text()
        except (aiohttp.ClientError, TimeoutError):
            pass
        self.failures += 1
        return None

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.scrape(session)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    def backlogs(self, start: float, end: float) -> dict[str, dict[str, Any]]:
        """Per queue and per outbox between two monotonic times: first, max and last value."""
        out: dict[str, dict[str, Any]] = {}
        window = [(t, g) for t, g in self.series if start <= t <= end]
        for metric, prefix in (("emeterai_queue_depth", "queue"), ("emeterai_outbox_backlog", "outbox"),
                               ("emeterai_admission_backlog", "admission")):
            names = sorted({n for _, g in window for n in g.get(metric, {})})
            for name in names:
                values = [g[metric][name] for _, g in window if name in g.get(metric, {})]
                if values and max(values) > 0:
                    out[f"{prefix} {name}"] = {"first": values[0], "max": max(values), "last": values[-1]}
        return out

    def in_flight_max(self, start: float, end: float) -> dict[str, float]:
        window = [g.get("emeterai_http_in_flight", {}) for t, g in self.series if start <= t <= end]
        return {svc: max(w.get(svc, 0.0) for w in window) for svc in sorted({k for w in window for k in w})}

    def server_latency(self, start: float, end: float) -> dict[str, dict[str, float]]:
        """Per api route between two times: requests answered and their mean time in the server
        (from the first scrape at or after ``start`` to the last at or before ``end``)."""
        window = [(t, h) for t, h in self.http if start <= t <= end]
        if len(window) < 2:
            return {}
        (_, first), (_, last) = window[0], window[-1]
        out = {}
        for key, (secs, n) in last.items():
            secs0, n0 = first.get(key, (0.0, 0.0))
            if n - n0 >= 1 and not key.endswith(("/metrics", "/healthz", "/readyz")):
                out[key] = {"requests": int(n - n0), "mean_ms": round(1000 * (secs - secs0) / (n - n0), 1)}
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["mean_ms"]))

    def db_queries_between(self, start: float, end: float) -> dict[str, float]:
        """Statements each process (``<service>-<process>``) sent between two monotonic times: its
        rate between the scrapes nearest outside them times the window's length, so that it covers
        the same time as the CPU figures (``ProcessSampler.cpu_between``, finer-grained); {}
        when no process counts them (a platform found running without ``db_count_queries``). A
        process restarted in between counts from its restart."""
        window = [(t, q) for t, q in self.db_queries if start - self.interval_s <= t <= end + self.interval_s]
        if len(window) < 2 or window[-1][0] <= window[0][0]:
            return {}
        (t0, first), (t1, last) = window[0], window[-1]
        scale = (end - start) / (t1 - t0)
        return {k: round(scale * (v - first.get(k, 0.0) if v >= first.get(k, 0.0) else v), 1)
                for k, v in last.items()}

    def handler_ms(self) -> dict[str, float]:
        return {q: round(1000 * s / n, 2) for q, (s, n) in sorted(self.handler.items()) if n}
