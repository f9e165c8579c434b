"""``python -m bench.stamping``: stamped and signed documents/s through the service beside a plain pyHanko loop.

In one run, on one generated 3-page A4 document (``emeterai_testkit.documents.sample_pdf(3)``)
and the development signing chain (``dev_signing_chain``, EC P-256, root + stamping certificate):

1. **baseline**, a plain single-process pyHanko loop as a developer would write it:
   ``SimpleSigner.load(key, cert, ca_chain_files=[root])`` once, then per document an
   ``IncrementalPdfFileWriter`` and ``PdfSigner(PdfSignatureMetadata(field_name, reason,
   subfilter=PADES), signer, stamp_style=QRStampStyle(...), new_field_spec=SigFieldSpec(...,
   box=...)).sign_pdf(writer, appearance_text_params={"url": token})`` with pyHanko's default
   signature sizing (it signs every document twice). The QR code holds the same minting token
   the service prints. Run in a fresh process, before the service and again after it; the
   better of the two is the baseline (other work on a shared machine only ever slows it);
2. our ``stamp_pdf`` in one process (the same document, serial and token), and in the service's
   own PDF process pool (``PdfPool``, one process per core): what signing alone costs, and the
   ceiling the service cannot pass on this machine;
3. **the service**: a fresh database (``emeterai_bench_stamping``) and vhost, real ``python -m
   stamping_service api|worker|relay`` processes (one each; the api and the worker each run a
   PDF pool sized to the cores), a token key pair and buyer tokens for ``--accounts`` accounts,
   serials with real Ed25519 stamp tokens (minting's ``StampSigner``) inserted as UNUSED stamps.
   After a warm-up (PDF processes started, signer loaded), ``--documents`` uploads go to ``POST
   /v1/stampings`` (multipart, ``Idempotency-Key``, bearer token), ``--concurrency`` in flight;
   timed from the first upload sent until the database shows every job DONE. Every upload must
   be accepted, every job DONE with its own serial and its ``stamping.document_stamped.v1``
   published, and one stamped document must verify (intact, trusted).

Ratio = service documents/s ÷ baseline documents/s (target ≥ 2.5). CPU per document by process
(api, its PDF pool, worker, its PDF pool, relay, PostgreSQL, RabbitMQ) tells where the time goes.
``--profile`` also profiles ``stamp_pdf`` and the baseline in one process each (cProfile, untimed).
The front door's shaping (``admission_min_limit``, ``upload_burst_per_account``) is raised to let
the whole backlog in: the figure is how fast the service drains uploads, not how it sheds them.
Writes ``bench/results/stamping.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import math
import multiprocessing
import os
import pstats
import re
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import uvloop
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from emeterai_shared.auth import TokenIssuer, ensure_keypair
from emeterai_shared.contracts.events import DocumentStamped
from emeterai_shared.db import create_pool
from emeterai_shared.messaging.topology import QueueSpec, declare_consumer_queue
from emeterai_testkit.documents import sample_pdf
from emeterai_testkit.fixtures import reset_service, settings_for
from emeterai_testkit.platform import Platform
from minting_service.domain import serial
from minting_service.domain.token import StampSigner
from stamping_service.adapters.pdf.signer import DEV_CERT, DEV_KEY, DEV_ROOT, dev_signing_chain
from stamping_service.adapters.pdfpool import PdfPool
from stamping_service.bootstrap import SERVICE
from stamping_service.config import StampingSettings

from bench.callbacks.load import Load
from bench.common import benchmark_broker, fresh_vhost, machine_info, rate_record
from bench.messaging.cpu import SERVERS, machine_busy_s
from bench.messaging.raw import Rate

DATABASE = "emeterai_bench_stamping"
VHOST = "emeterai_bench_stamping"
SINK = QueueSpec("bench.stamping.sink", (DocumentStamped.TYPE,))
"""Takes the stamped announcements (no minting service here), so no outbox row is unroutable."""
TARGET_RATIO = 2.5
PAGES = 3
X, Y, SIZE = 72.0, 72.0, 100.0
REASON = "Dokumen"
POLL_INTERVAL_S = 0.05
RESULTS = Path(__file__).resolve().parent / "results" / "stamping.json"
REPORTED_SETTINGS = ("pdf_workers", "job_concurrency", "job_prefetch", "pdf_worker_max_tasks", "db_pool_max",
                     "relay_poll_interval_s", "admission_min_limit", "upload_burst_per_account",
                     "upload_rate_per_account_per_s", "log_level")
_TICKS = os.sysconf("SC_CLK_TCK")
_SIGN_METRIC = re.compile(r"^emeterai_stamp_sign_seconds_(sum|count) ([0-9.e+-]+)$", re.MULTILINE)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.stamping", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=400, help="timed uploads through the service (N)")
    parser.add_argument("--baseline", type=int, default=200, help="documents per baseline loop (run twice)")
    parser.add_argument("--signing", type=int, default=200, help="documents for the signing-only measures")
    parser.add_argument("--warmup", type=int, default=0,
                        help="untimed uploads before N (default: 4 per core); warm-up of each loop: 3")
    parser.add_argument("--accounts", type=int, default=8, help="buyer accounts the uploads are spread over")
    parser.add_argument("--concurrency", type=int, default=16, help="uploads in flight")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a stamping setting of the api, worker and relay (repeatable)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="also profile stamp_pdf and the baseline in one process each (cProfile) into DIR")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


# --- the loops, each run in a fresh process (pyHanko runs its own event loop) -----------------------------------


@dataclass(frozen=True)
class Loop:
    """``count`` documents signed one after the other in one process."""

    count: int
    seconds: float
    cpu_s: float
    """CPU time of the process over the loop: what a document costs whatever else the machine runs."""
    last: bytes

    def record(self) -> dict[str, float]:
        return {**rate_record(Rate(self.count, self.seconds)),
                "cpu_ms_per_document": round(1000 * self.cpu_s / self.count, 2),
                "share_of_a_core": round(self.cpu_s / self.seconds, 2)}


def naive_loop(dev_dir: str, stamps: list[tuple[str, str]], warmup: int, profile: str | None) -> Loop:
    """The baseline: pyHanko as its documentation shows it."""
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.sign import signers
    from pyhanko.sign.fields import SigFieldSpec, SigSeedSubFilter
    from pyhanko.stamp import QRStampStyle

    document = sample_pdf(PAGES)
    folder = Path(dev_dir)
    signer = signers.SimpleSigner.load(str(folder / DEV_KEY), str(folder / DEV_CERT),
                                       ca_chain_files=(str(folder / DEV_ROOT),))
    assert signer is not None, "the development key did not load"
    box = (int(X), int(Y), int(X + SIZE), int(Y + SIZE))

    def sign(sn: str, token: str) -> bytes:
        name = f"Meterai-{sn}"
        writer = IncrementalPdfFileWriter(io.BytesIO(document))
        pdf_signer = signers.PdfSigner(
            signers.PdfSignatureMetadata(field_name=name, reason=f"[{sn}] {REASON}", subfilter=SigSeedSubFilter.PADES),
            signer=signer,
            stamp_style=QRStampStyle(stamp_text="METERAI ELEKTRONIK 10000\nSEPULUH RIBU RUPIAH\n%(sn)s"),
            new_field_spec=SigFieldSpec(sig_field_name=name, on_page=0, box=box),
        )
        out = pdf_signer.sign_pdf(writer, appearance_text_params={"url": token, "sn": sn})
        return bytes(out.getvalue())

    return _timed_loop(sign, stamps, warmup, profile)


def service_loop(dev_dir: str, stamps: list[tuple[str, str]], warmup: int, profile: str | None) -> Loop:
    """Our ``stamp_pdf`` with the service's signer (key parsed once, signature space reserved)."""
    from stamping_service.adapters.pdf.stamp import stamp_pdf

    document = sample_pdf(PAGES)
    signer, _root = dev_signing_chain(dev_dir)

    def sign(sn: str, token: str) -> bytes:
        stamped: bytes = stamp_pdf(document, password=None, page=1, x=X, y=Y, size=SIZE, sn=sn, token=token,
                                   reason=REASON, signer=signer)
        return stamped

    return _timed_loop(sign, stamps, warmup, profile)


def _timed_loop(sign: Any, stamps: list[tuple[str, str]], warmup: int, profile: str | None) -> Loop:
    for sn, token in stamps[:warmup]:
        sign(sn, token)
    profiler = cProfile.Profile() if profile else None
    out = b""
    started, cpu_started = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    for sn, token in stamps[warmup:]:
        out = sign(sn, token)
    if profiler is not None:
        profiler.disable()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if profiler is not None and profile:
        profiler.dump_stats(profile)
    return Loop(len(stamps) - warmup, elapsed, cpu, out)


async def in_fresh_process(function: Any, *args: Any) -> Any:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as executor:
        return await asyncio.get_running_loop().run_in_executor(executor, function, *args)


# --- quota, uploads, progress ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stamps:
    """Serials with real stamp tokens (minting's format), per account."""

    by_account: dict[uuid.UUID, list[tuple[str, str]]]

    @staticmethod
    def generate(accounts: int, per_account: int) -> Stamps:
        signer = StampSigner(Ed25519PrivateKey.generate())
        now = datetime.now(UTC)
        by_account: dict[uuid.UUID, list[tuple[str, str]]] = {}
        for _ in range(accounts):
            order_id = uuid.uuid4()
            sns = [serial.generate() for _ in range(per_account)]
            by_account[uuid.uuid4()] = [(sn, signer.sign(sn, order_id, now)) for sn in sns]
        return Stamps(by_account)

    def flat(self) -> list[tuple[str, str]]:
        return [stamp for stamps in self.by_account.values() for stamp in stamps]


async def grant(pool: asyncpg.Pool, stamps: Stamps) -> None:
    """The accounts' serials as UNUSED stamps, as the projection of minting.serials_issued.v1 holds them."""
    rows = [(sn, account, uuid.uuid4(), token) for account, items in stamps.by_account.items() for sn, token in items]
    await pool.executemany("INSERT INTO stamps (sn, account_id, order_id, token) VALUES ($1, $2, $3, $4)", rows)


async def declare_sink(settings: StampingSettings) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        await declare_consumer_queue(await connection.channel(), SINK)
    finally:
        await connection.close()


async def upload_all(session: aiohttp.ClientSession, url: str, document: bytes, bearers: list[str],
                     count: int, concurrency: int) -> Load:
    """``count`` uploads, round-robin over the accounts' bearer tokens, ``concurrency`` in flight."""
    pending = iter(range(count))
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def sender() -> None:
        for index in pending:
            form = aiohttp.FormData()
            form.add_field("file", document, filename="document.pdf", content_type="application/pdf")
            for name, value in (("page", 1), ("x", X), ("y", Y), ("size", SIZE), ("reason", REASON)):
                form.add_field(name, str(value))
            headers = {"Authorization": f"Bearer {bearers[index % len(bearers)]}",
                       "Idempotency-Key": str(uuid.uuid4())}
            sent = time.perf_counter()
            try:
                async with session.post(url + "/v1/stampings", data=form, headers=headers) as response:
                    status, body = response.status, await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            latencies.append(1000 * (time.perf_counter() - sent))
            if status != 202:
                label = f"HTTP {status} {body[:120].decode(errors='replace')}"
                errors[label] = errors.get(label, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return Load(Rate(count, time.perf_counter() - started), latencies, errors)


async def wait_done(pool: asyncpg.Pool, platform: Platform, total: int, timeout_s: float) -> None:
    """Until ``total`` jobs are DONE; any FAILED job, a dead process or the timeout is an error."""
    deadline = time.monotonic() + timeout_s
    while True:
        row = await pool.fetchrow("SELECT count(*) FILTER (WHERE status = 'DONE') AS done,"
                                  " count(*) FILTER (WHERE status = 'FAILED') AS failed FROM stampings")
        if row["failed"]:
            error = await pool.fetchval("SELECT error FROM stampings WHERE status = 'FAILED' LIMIT 1")
            raise RuntimeError(f"{row['failed']} stamping job(s) FAILED, e.g.: {error}")
        if row["done"] >= total:
            return
        dead = [f"{p.service} {p.kind}" for p in platform.procs.values() if not p.alive]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"{row['done']} of {total} jobs DONE; dead: {dead or 'none'}; see the logs")
        await asyncio.sleep(POLL_INTERVAL_S)


async def wait_published(pool: asyncpg.Pool, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"):
        if time.monotonic() > deadline:
            raise RuntimeError("the relay did not publish the outbox: see the relay log")
        await asyncio.sleep(POLL_INTERVAL_S)


async def sign_metric(session: aiohttp.ClientSession, port: int) -> tuple[float, float]:
    """The worker's ``emeterai_stamp_sign_seconds`` (sum, count): wall time per document spent awaiting its PDF
    pool (queueing for a PDF process included)."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    values = {kind: float(value) for kind, value in _SIGN_METRIC.findall(text)}
    return values.get("sum", 0.0), values.get("count", 0.0)


# --- CPU by process, PDF pools included (their processes are grandchildren: forkserver) ---------------------------


def process_table() -> dict[int, tuple[int, str, float]]:
    """pid → (parent pid, command name, user + system CPU seconds) of every process."""
    table: dict[int, tuple[int, str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / _TICKS)
    return table


def descendants(table: dict[int, tuple[int, str, float]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _comm, _cpu) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found.add(pid)
        stack.extend(children.get(pid, []))
    return found


@dataclass(frozen=True)
class CpuSnapshot:
    at: float
    groups: dict[str, dict[int, float]]
    machine_busy_s: float


def cpu_snapshot(roots: dict[str, int]) -> CpuSnapshot:
    """CPU seconds per process of each service process, of its PDF pool, of the servers and of this bench."""
    table = process_table()
    groups: dict[str, dict[int, float]] = {}
    for label, pid in roots.items():
        groups[label] = {pid: table[pid][2]} if pid in table else {}
        groups[f"{label} pdf pool"] = {p: table[p][2] for p in descendants(table, pid)}
    for label, name in SERVERS.items():
        groups[label] = {pid: cpu for pid, (_ppid, comm, cpu) in table.items() if comm == name}
    groups["bench"] = {os.getpid(): time.process_time()}
    return CpuSnapshot(time.perf_counter(), {k: v for k, v in groups.items() if v or k in roots}, machine_busy_s())


def cpu_per_document(before: CpuSnapshot, after: CpuSnapshot, documents: int) -> dict[str, Any]:
    wall = after.at - before.at
    used = {label: sum(cpu - before.groups.get(label, {}).get(pid, 0.0) for pid, cpu in pids.items())
            for label, pids in after.groups.items()}
    total = sum(used.values())
    ours = sum(cpu for label, cpu in used.items() if label not in SERVERS)
    return {
        "ms_per_document": {label: round(1000 * cpu / documents, 2) for label, cpu in used.items()},
        "total_ms_per_document": round(1000 * total / documents, 2),
        "ours_ms_per_document": round(1000 * ours / documents, 2),
        "cores_busy": {label: round(cpu / wall, 2) for label, cpu in used.items()},
        "cores_busy_ours": round(total / wall, 2),
        "machine_cores_busy": round((after.machine_busy_s - before.machine_busy_s) / wall, 2),
    }


# --- the run -----------------------------------------------------------------------------------------------------


async def run_service(args: argparse.Namespace, settings: StampingSettings, workdir: Path, issuer: TokenIssuer,
                      stamps: Stamps, warmup: int) -> dict[str, Any]:
    document = sample_pdf(PAGES)
    bearers = [issuer.issue(account) for account in stamps.by_account]
    pool = await create_pool(settings.database_url, max_size=2)
    platform = Platform(logs=workdir)
    platform.add(SERVICE, settings)
    try:
        await grant(pool, stamps)
        await platform.start(("stamping", "api"), ("stamping", "worker"), ("stamping", "relay"))
        url = platform.url("stamping")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency),
                                         timeout=aiohttp.ClientTimeout(total=120)) as session:
            warm = await upload_all(session, url, document, bearers, warmup, min(args.concurrency, warmup))
            if warm.errors:
                raise RuntimeError(f"warm-up uploads refused: {warm.errors}")
            await wait_done(pool, platform, warmup, timeout_s=120)
            await wait_published(pool)
            roots = {kind: proc.popen.pid for (_s, kind), proc in platform.procs.items() if proc.popen is not None}
            sign_before = await sign_metric(session, settings.worker_metrics_port)
            cpu_before = cpu_snapshot(roots)
            started = time.perf_counter()
            uploads = await upload_all(session, url, document, bearers, args.documents, args.concurrency)
            if uploads.errors:
                raise RuntimeError(f"uploads refused: {uploads.errors}")
            await wait_done(pool, platform, warmup + args.documents, timeout_s=60 + args.documents)
            elapsed = time.perf_counter() - started
            cpu_after = cpu_snapshot(roots)
            sign_after = await sign_metric(session, settings.worker_metrics_port)
            await wait_published(pool)
        timeline = await pool.fetchrow(
            """SELECT extract(epoch FROM max(created_at) - min(created_at)) AS accepting_s,
                      extract(epoch FROM max(stamped_at) - min(created_at)) AS first_accepted_to_last_stamped_s
                 FROM (SELECT created_at, stamped_at FROM stampings ORDER BY created_at OFFSET $1) timed""", warmup)
        checked = await check(pool, warmup + args.documents)
        stamped = await pool.fetchval("SELECT data FROM documents WHERE kind = 'stamped' LIMIT 1")
    finally:
        platform.stop()
        await pool.close()
    signs = sign_after[1] - sign_before[1]
    return {
        "documents": rate_record(Rate(args.documents, elapsed)),
        "note": "postgresql and rabbitmq CPU includes whatever other sessions had them do meanwhile",
        "uploads_accepted": {**rate_record(uploads.rate),
                             "latency_ms": {"p50": round(uploads.percentile(0.5), 1),
                                            "p99": round(uploads.percentile(0.99), 1)}},
        "first_accepted_to_last_stamped_s": round(float(timeline["first_accepted_to_last_stamped_s"]), 3),
        "worker_sign_wait_ms_mean": round(1000 * (sign_after[0] - sign_before[0]) / signs, 1) if signs else None,
        "cpu": cpu_per_document(cpu_before, cpu_after, args.documents),
        "checked": checked,
        "_stamped_sample": stamped,
    }


async def check(pool: asyncpg.Pool, total: int) -> dict[str, Any]:
    row = await pool.fetchrow(
        """SELECT (SELECT count(*) FROM stampings WHERE status = 'DONE') AS done,
                  (SELECT count(*) FROM stampings WHERE status <> 'DONE') AS not_done,
                  (SELECT count(DISTINCT sn) FROM stampings) AS distinct_serials,
                  (SELECT count(*) FROM stamps WHERE status = 'USED') AS stamps_used,
                  (SELECT count(*) FROM documents WHERE kind = 'stamped') AS stamped_documents,
                  (SELECT count(*) FROM outbox WHERE message_type = $1 AND sent_at IS NOT NULL) AS stamped_published""",
        DocumentStamped.TYPE)
    result: dict[str, Any] = {key: int(value) for key, value in row.items()}
    result["expected"] = total
    result["ok"] = all(result[k] == total for k in ("done", "distinct_serials", "stamps_used", "stamped_documents",
                                                    "stamped_published")) and result["not_done"] == 0
    return result


async def verified(pdf: PdfPool, data: bytes, sn: str | None = None) -> dict[str, Any]:
    checks = await pdf.verify(data, None, timeout=60)
    stamps = [c for c in checks if c.sn is not None]
    result = {"stamps": len(stamps), "intact": all(c.intact for c in stamps),
              "trusted": all(c.trusted for c in stamps),
              "serial_in_reason": sn is None or any(c.sn == sn for c in stamps)}
    return {**result, "ok": len(stamps) == 1 and all(result.values())}


async def pool_ceiling(pdf: PdfPool, stamps: list[tuple[str, str]]) -> tuple[Rate, float]:
    """Our stamp_pdf through the service's PdfPool, two documents per process in flight; returns the rate and
    the CPU milliseconds per document of the pool's processes."""
    document = sample_pdf(PAGES)
    pending = iter(stamps)

    async def feeder() -> None:
        for sn, token in pending:
            await pdf.stamp(document, password=None, page=1, x=X, y=Y, size=SIZE, sn=sn, token=token, reason=REASON,
                            timeout=60)

    for sn, token in stamps[:2 * pdf.workers]:  # every process started and its signer loaded
        await pdf.stamp(document, password=None, page=1, x=X, y=Y, size=SIZE, sn=sn, token=token, reason=REASON,
                        timeout=60)
    before = cpu_snapshot({"bench": os.getpid()})
    started = time.perf_counter()
    await asyncio.gather(*(feeder() for _ in range(2 * pdf.workers)))
    elapsed = time.perf_counter() - started
    cpu = cpu_per_document(before, cpu_snapshot({"bench": os.getpid()}), len(stamps))
    return Rate(len(stamps), elapsed), cpu["ms_per_document"].get("bench pdf pool", 0.0)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    load_at_start = os.getloadavg()[0]
    nproc = os.cpu_count() or 1
    warmup = args.warmup or 4 * nproc
    secrets = workdir / "secrets"
    private_key = secrets / "auth-ed25519.key"
    total = warmup + args.documents
    per_account = math.ceil(total / args.accounts)
    # The front door's shaping (global admission from the backlog, each account's upload rate) lets
    # the whole backlog in: this measures how fast the service drains it, not how it sheds arrivals.
    front_door: dict[str, Any] = {"admission_min_limit": total, "upload_burst_per_account": per_account}
    overrides = {**front_door, **dict(item.split("=", 1) for item in args.overrides)}
    settings = settings_for(StampingSettings, database_name=DATABASE, amqp_url=fresh_vhost(VHOST),
                            secrets_dir=str(secrets), log_level="WARNING", **overrides)
    assert isinstance(settings, StampingSettings)
    ensure_keypair(private_key, Path(settings.auth_public_key_file))
    issuer = TokenIssuer(private_key.read_bytes(), timedelta(hours=1))
    dev_dir = settings.signing_dev_dir
    dev_signing_chain(dev_dir)  # the chain the service will use, generated before anyone signs
    await reset_service(SERVICE, settings)
    await declare_sink(settings)

    stamps = Stamps.generate(args.accounts, per_account)
    loop_stamps = Stamps.generate(1, max(args.baseline, args.signing, 50) + 3).flat()
    profile_dir = args.profile.resolve() if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)

    def profile(name: str) -> str | None:
        return str(profile_dir / f"{name}.prof") if profile_dir is not None else None

    print(f"baseline: plain pyHanko loop, {args.baseline} documents ...", flush=True)
    baselines: list[Loop] = [await in_fresh_process(naive_loop, dev_dir, loop_stamps[:args.baseline + 3], 3, None)]
    print(f"  {baselines[0].count / baselines[0].seconds:.1f}/s; stamp_pdf in one process, {args.signing} "
          f"documents ...", flush=True)
    single: Loop = await in_fresh_process(service_loop, dev_dir, loop_stamps[:args.signing + 3], 3, None)
    pdf = PdfPool(settings.signing(), settings.pdf_workers, settings.pdf_worker_max_tasks)
    try:
        print(f"  {single.count / single.seconds:.1f}/s; stamp_pdf in the service's PDF pool "
              f"({settings.pdf_workers} processes) ...", flush=True)
        ceiling, ceiling_cpu = await pool_ceiling(pdf, loop_stamps[:args.signing])
        print(f"  {ceiling.per_s:.1f}/s; the service: {args.documents} uploads after {warmup} warm-up ...",
              flush=True)
        service = await run_service(args, settings, workdir, issuer, stamps, warmup)
        print(f"  {service['documents']['per_s']:.1f}/s; baseline again ...", flush=True)
        baselines.append(await in_fresh_process(naive_loop, dev_dir, loop_stamps[:args.baseline + 3], 3, None))
        outputs_verified = {
            "baseline": await verified(pdf, baselines[0].last, loop_stamps[args.baseline + 2][0]),
            "stamp_pdf": await verified(pdf, single.last, loop_stamps[args.signing + 2][0]),
            "service": await verified(pdf, service.pop("_stamped_sample")),
        }
    finally:
        pdf.close()
    if profile_dir is not None:  # untimed: cProfile slows pure Python code several times
        print("profiling the baseline and stamp_pdf (cProfile, 50 documents each) ...", flush=True)
        await in_fresh_process(naive_loop, dev_dir, loop_stamps[:53], 3, profile("baseline"))
        await in_fresh_process(service_loop, dev_dir, loop_stamps[:53], 3, profile("stamp_pdf"))
    best = max(baselines, key=lambda loop: loop.count / loop.seconds)
    baseline = Rate(best.count, best.seconds)
    baseline_cpu_ms = min(1000 * loop.cpu_s / loop.count for loop in baselines)
    service_per_s = service["documents"]["per_s"]
    ratio = round(service_per_s / baseline.per_s, 2)
    service_cpu_ms = service["cpu"]["total_ms_per_document"]
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "documents": args.documents,
        "warmup": warmup,
        "document": {"pages": PAGES, "bytes": len(sample_pdf(PAGES)), "stamp": [X, Y, SIZE],
                     "token_chars": len(loop_stamps[0][1]), "signing_key": "EC P-256 (development chain)"},
        "baseline": {"runs": [loop.record() for loop in baselines], "per_s": round(baseline.per_s, 1),
                     "ms_per_document": round(1000 / baseline.per_s, 1),
                     "cpu_ms_per_document": round(baseline_cpu_ms, 2),
                     "how": "SimpleSigner.load once; per document IncrementalPdfFileWriter + PdfSigner(PAdES, "
                            "QRStampStyle, SigFieldSpec box).sign_pdf, default signature sizing; one process; "
                            "the better of a run before and a run after the service"},
        "stamp_pdf_one_process": {**single.record(),
                                  "ratio_to_baseline": round(single.count / single.seconds / baseline.per_s, 2)},
        "stamp_pdf_pool": {**rate_record(ceiling), "processes": settings.pdf_workers,
                           "cpu_ms_per_document": ceiling_cpu,
                           "ratio_to_baseline": round(ceiling.per_s / baseline.per_s, 2)},
        "service": service,
        "service_per_s": service_per_s,
        "baseline_per_s": round(baseline.per_s, 1),
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "met": ratio >= TARGET_RATIO,
        "service_share_of_pool_ceiling": round(service_per_s / ceiling.per_s, 2),
        "other_work_cores_during_service": round(service["cpu"]["machine_cores_busy"]
                                                 - service["cpu"]["cores_busy_ours"], 2),
        "cpu_cost_ratio": round(baseline_cpu_ms / service_cpu_ms, 2),
        "ratio_ceiling_from_cpu": round(nproc * baseline_cpu_ms / service_cpu_ms, 2),
        "outputs_verified": outputs_verified,
        "settings": {**{name: getattr(settings, name) for name in REPORTED_SETTINGS},
                     "accounts": args.accounts, "upload_concurrency": args.concurrency,
                     "api_workers_worker_relay": "1 / 1 / 1"},
        "machine": await machine_info(settings, load_at_start),
    }


def print_table(report: dict[str, Any]) -> None:
    service = report["service"]
    rows = [("baseline: plain pyHanko loop, 1 process (best run)", report["baseline"]["runs"][0]
             if report["baseline"]["runs"][0]["per_s"] >= report["baseline"]["runs"][-1]["per_s"]
             else report["baseline"]["runs"][-1]),
            ("our stamp_pdf, 1 process", report["stamp_pdf_one_process"]),
            (f"our stamp_pdf, PdfPool of {report['stamp_pdf_pool']['processes']} (signing only)",
             report["stamp_pdf_pool"]),
            ("service: uploads accepted (202)", service["uploads_accepted"]),
            ("service: documents stamped (first upload → all DONE)", service["documents"])]
    print(f"\n{'measure':<56}{'docs':>6}{'seconds':>9}{'per s':>8}{'x baseline':>12}")
    base = report["baseline_per_s"]
    for name, rate in rows:
        print(f"{name:<56}{rate['count']:>6}{rate['seconds']:>9.2f}{rate['per_s']:>8.1f}{rate['per_s'] / base:>12.2f}")
    runs = " / ".join(f"{r['per_s']:.1f}" for r in report["baseline"]["runs"])
    print(f"\nbaseline runs before / after the service: {runs} docs/s (the better is used)")
    print(f"CPU ms per document: baseline {report['baseline']['cpu_ms_per_document']}, stamp_pdf "
          f"{report['stamp_pdf_one_process']['cpu_ms_per_document']} (one process), "
          f"{report['stamp_pdf_pool']['cpu_ms_per_document']} (pool), service "
          f"{service['cpu']['total_ms_per_document']} in all ({service['cpu']['ours_ms_per_document']} in our "
          f"processes); CPU cost ratio {report['cpu_cost_ratio']}, so at most "
          f"{report['ratio_ceiling_from_cpu']}x on {report['machine']['nproc']} idle cores")
    verdict = "met" if report["met"] else "NOT met"
    print(f"ratio = {report['service_per_s']:.1f} / {report['baseline_per_s']:.1f} = {report['ratio']:.2f}"
          f"  (target ≥ {report['target_ratio']}: {verdict}); service ÷ signing-only pool: "
          f"{report['service_share_of_pool_ceiling']}")
    others = round(service["cpu"]["machine_cores_busy"] - service["cpu"]["cores_busy_ours"], 2)
    shares = " / ".join(f"{r['share_of_a_core']}" for r in report["baseline"]["runs"])
    print(f"contention: other work kept {others} of {report['machine']['nproc']} cores busy during the service run; "
          f"the baseline runs had {shares} of a core")
    print(f"upload latency p50 / p99: {service['uploads_accepted']['latency_ms']['p50']} / "
          f"{service['uploads_accepted']['latency_ms']['p99']} ms; worker's mean wait per signature (PDF pool, "
          f"queueing included): {service['worker_sign_wait_ms_mean']} ms")
    cpu = service["cpu"]
    print(f"\n{'CPU during the service run':<28}{'ms per doc':>11}{'cores':>7}")
    for label, ms in sorted(cpu["ms_per_document"].items(), key=lambda item: -item[1]):
        print(f"{label:<28}{ms:>11.2f}{cpu['cores_busy'][label]:>7.2f}")
    print(f"{'total (ours + servers)':<28}{cpu['total_ms_per_document']:>11.2f}{cpu['cores_busy_ours']:>7.2f}"
          f"   machine: {cpu['machine_cores_busy']} cores busy")
    print(f"\nchecked: {service['checked']}")
    print("outputs verified (pyHanko validator, development root): "
          + ", ".join(f"{k} {'ok' if v['ok'] else 'FAILED'}" for k, v in report["outputs_verified"].items()))
    machine = report["machine"]
    print("settings: " + ", ".join(f"{k}={v}" for k, v in report["settings"].items()))
    print(f"machine: {machine['nproc']} cpu, Python {machine['python']}, PostgreSQL {machine['postgresql']}"
          f" (synchronous_commit={machine['postgresql_synchronous_commit']}), "
          f"load average {machine['loadavg_1m']['start']} → {machine['loadavg_1m']['end']}")


def print_profiles(directory: Path, lines: int = 25) -> None:
    for name in ("baseline", "stamp_pdf"):
        path = directory / f"{name}.prof"
        print(f"\ncProfile of {name} in one process ({path}), by cumulative time:")
        pstats.Stats(str(path)).strip_dirs().sort_stats("cumulative").print_stats(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with benchmark_broker(VHOST), tempfile.TemporaryDirectory(prefix="bench-stamping-") as workdir:
        report = uvloop.run(run(args, Path(workdir)))
    print_table(report)
    if args.profile is not None:
        print_profiles(args.profile.resolve())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.output}")
    if not report["service"]["checked"]["ok"] or not all(v["ok"] for v in report["outputs_verified"].values()):
        print("verification FAILED: see checked and outputs verified above", file=sys.stderr)
        return 1
    if not report["met"]:
        print(f"below target ratio {TARGET_RATIO}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
