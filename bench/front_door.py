"""``python -m bench.front_door``: CPU per request of the order api's front door, by process.

In one run: a fresh order database (``emeterai_bench_front_door``) and one order ``api`` process
(``python -m order_service api``; admission and per-account limits out of the way, logs at
WARNING, no trace exporter), 32 accounts signed in with a code (as the page's buyers are), then
for each phase a warm-up and ``--requests`` requests with ``--concurrency`` in flight:
``GET /v1/pricing``, ``POST /v1/orders`` by virtual account, ``POST /v1/orders`` by QRIS (every
answer must be 200 / 202). CPU per request by process
(order api, PostgreSQL's backends, this load generator; ``bench.messaging.cpu``) is a figure that
depends little on the machine's speed or on other work, unlike the rates.

Then phones waiting on the pay page (``--phones`` orders AWAITING_PAYMENT, one per phone, that
nobody pays: the minutes between ordering and paying at a bank), each following its order for
``--window-s`` after a warm-up, once as the page used to (``GET /v1/orders/{id}`` every
``--poll-s``) and once as it does now (long polls: ``If-None-Match`` and ``wait_s``): requests and
CPU by process per phone-minute, and their ratio. Writes ``bench/results/front_door.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import uvloop
from emeterai_testkit.fixtures import reset_service, settings_for
from emeterai_testkit.platform import Platform
from order_service.bootstrap import SERVICE
from order_service.config import OrderSettings

from bench.common import benchmark_broker, fresh_vhost, machine_info
from bench.messaging.cpu import CpuMeter

DATABASE = "emeterai_bench_front_door"
VHOST = "emeterai_bench_front_door"
ACCOUNTS = 32
RESULTS = Path(__file__).resolve().parent / "results" / "front_door.json"
Request = tuple[str, str, dict[str, Any], int]
"""(method, url, keyword arguments of ``session.request``, the status expected)"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.front_door", description=__doc__)
    parser.add_argument("--requests", type=int, default=3_000, help="timed requests per phase")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--phones", type=int, default=1_000, help="phones waiting on the pay page")
    parser.add_argument("--window-s", type=float, default=60.0, help="timed seconds of waiting, per way")
    parser.add_argument("--warmup-s", type=float, default=10.0, help="untimed seconds before each window")
    parser.add_argument("--poll-s", type=float, default=5.0,
                        help="seconds between the polls of the old page (its poll() settles at 5 s)")
    parser.add_argument("--wait-s", type=int, default=25, help="wait_s of the long polls (as the page asks)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


async def fire(session: aiohttp.ClientSession, count: int, request: Callable[[int], Request],
               concurrency: int) -> Counter[str]:
    """``count`` requests, ``concurrency`` in flight; the unexpected answers by status."""
    pending = iter(range(count))
    errors: Counter[str] = Counter()

    async def sender() -> None:
        for i in pending:
            method, url, kwargs, expected = request(i)
            async with session.request(method, url, **kwargs) as response:
                await response.read()
                if response.status != expected:
                    errors[str(response.status)] += 1

    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return errors


async def follow(session: aiohttp.ClientSession, url: str, token: str, args: argparse.Namespace, *,
                 long_poll: bool, answers: Counter[str]) -> None:
    """One phone on the pay page until cancelled: a poll every ``poll_s`` (from a random moment), or
    long polls with the view's ``ETag``; every answer counted by status."""
    auth = {"Authorization": f"Bearer {token}"}
    etag = ""
    await asyncio.sleep(random.uniform(0, args.poll_s))  # the phones arrived at different moments
    while True:
        if long_poll and etag:
            target, headers = f"{url}?wait_s={args.wait_s}", {**auth, "If-None-Match": etag}
        else:
            target, headers = url, auth
        async with session.get(target, headers=headers) as response:
            await response.read()
            answers[str(response.status)] += 1
            etag = response.headers.get("ETag", etag)
            retry_after = response.headers.get("Retry-After", "1") if response.status in (429, 503) else None
        if retry_after is not None:  # as the page does: come back when told
            await asyncio.sleep(int(retry_after) if retry_after.isdigit() else 1)
        elif not long_poll:
            await asyncio.sleep(args.poll_s)


async def waiting_phones(session: aiohttp.ClientSession, meter: CpuMeter, urls: list[tuple[str, str]],
                         args: argparse.Namespace, *, long_poll: bool) -> dict[str, Any]:
    """``len(urls)`` phones following their order for the warm-up and the window; requests and CPU
    per phone-minute over the window."""
    answers: Counter[str] = Counter()
    phones = [asyncio.create_task(follow(session, url, token, args, long_poll=long_poll, answers=answers))
              for url, token in urls]
    try:
        await asyncio.sleep(args.warmup_s)
        counted, before = sum(answers.values()), meter.snapshot()
        await asyncio.sleep(args.window_s)
        after, requests = meter.snapshot(), sum(answers.values()) - counted
    finally:
        for phone in phones:
            phone.cancel()
        await asyncio.gather(*phones, return_exceptions=True)
    phone_minutes = len(urls) * args.window_s / 60
    cpu = meter.per_message_ms(before, after, 1)  # CPU ms over the window in all
    return {"requests_per_phone_minute": round(requests / phone_minutes, 2),
            "cpu_ms_per_phone_minute": {k: round(v / phone_minutes, 3) for k, v in cpu.items() if k != "busy_cores"},
            "busy_cores": cpu["busy_cores"],
            "answers": dict(answers)}


async def signed_in(session: aiohttp.ClientSession, base: str, texts: asyncpg.Connection, phone: str) -> str:
    """The token of a buyer signed in with a code, as the page's buyers are (the code read from the
    text queued for the phone on ``texts``, the order database: no worker sends texts here)."""
    async with session.post(f"{base}/v1/auth/otp", json={"phone": phone}) as response:
        assert response.status == 202, await response.text()
    text = await texts.fetchval("SELECT body FROM sms_outbox ORDER BY id DESC LIMIT 1")
    [code] = re.findall(r"[0-9]{6}", text)
    async with session.post(f"{base}/v1/auth/token", json={"phone": phone, "code": code}) as response:
        assert response.status == 200, await response.text()
        token: str = (await response.json())["token"]
        return token


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    load_at_start = os.getloadavg()[0]
    settings = settings_for(OrderSettings, database_name=DATABASE, amqp_url=fresh_vhost(VHOST),
                            secrets_dir=str(workdir), log_level="WARNING", admission_min_limit=100_000_000,
                            order_rate_per_account_per_s=1e6, order_burst_per_account=1_000_000,
                            otp_client_limit=0, otp_phone_interval_s=0)
    assert isinstance(settings, OrderSettings)
    await reset_service(SERVICE, settings)
    platform = Platform(logs=workdir)
    platform.add(SERVICE, settings)
    env = {key: "" for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")}
    phases: dict[str, dict[str, Any]] = {}
    waiting: dict[str, dict[str, Any]] = {}
    try:
        await platform.start(("order", "api"), extra_env=env)
        popen = platform.proc("order", "api").popen
        assert popen is not None
        base = platform.url("order")
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
            texts = await asyncpg.connect(settings.database_url)
            try:
                tokens = [await signed_in(session, base, texts, f"+628123{i:07d}") for i in range(ACCOUNTS)]
            finally:
                await texts.close()

            def order(method: str) -> Callable[[int], Request]:
                return lambda i: ("POST", f"{base}/v1/orders", {
                    "json": {"quantity": 1, "payment_method": method},
                    "headers": {"Authorization": f"Bearer {tokens[i % ACCOUNTS]}",
                                "Idempotency-Key": str(uuid.uuid4())}}, 202)

            requests: dict[str, Callable[[int], Request]] = {
                "GET /v1/pricing": lambda _: ("GET", f"{base}/v1/pricing", {}, 200),
                "POST /v1/orders va": order("va"),
                "POST /v1/orders qris": order("qris"),
            }
            meter = CpuMeter({"order api": popen.pid})
            for name, request in requests.items():
                await fire(session, max(1, args.requests // 5), request, args.concurrency)  # warm-up
                before, started = meter.snapshot(), time.perf_counter()
                errors = await fire(session, args.requests, request, args.concurrency)
                seconds = time.perf_counter() - started
                phases[name] = {"per_s": round(args.requests / seconds, 1),
                                "cpu_ms": meter.per_message_ms(before, meter.snapshot(), args.requests),
                                "errors": dict(errors)}
            urls = []
            for i in range(args.phones):
                method, url, kwargs, _ = order("va")(i)
                async with session.request(method, url, **kwargs) as response:
                    urls.append((f"{base}/v1/orders/{(await response.json())['order_id']}", tokens[i % ACCOUNTS]))
        phones = aiohttp.TCPConnector(limit=0)  # one connection per phone, as phones have
        async with aiohttp.ClientSession(connector=phones, timeout=aiohttp.ClientTimeout(total=120)) as session:
            for way, long_poll in (("polls", False), ("long polls", True)):
                waiting[way] = await waiting_phones(session, meter, urls, args, long_poll=long_poll)
    finally:
        platform.stop()
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "requests": args.requests,
        "concurrency": args.concurrency,
        "phases": phases,
        "waiting": {"phones": args.phones, "window_s": args.window_s, "poll_s": args.poll_s, "wait_s": args.wait_s,
                    **waiting, **_ratios(waiting)},
        "ok": not any(phase["errors"] for phase in phases.values())
        and all(set(w["answers"]) <= {"200", "304"} for w in waiting.values()),
        "machine": await machine_info(settings, load_at_start),
    }


def _ratios(waiting: dict[str, dict[str, Any]]) -> dict[str, float]:
    """What the long polls cost against the polls, per phone-minute (requests; platform CPU: the
    order api and PostgreSQL)."""
    if set(waiting) != {"polls", "long polls"}:
        return {}
    old, new = waiting["polls"], waiting["long polls"]

    def platform(way: dict[str, Any]) -> float:
        cpu = way["cpu_ms_per_phone_minute"]
        return float(cpu["order api"] + cpu["postgresql"])

    return {"requests_ratio": round(new["requests_per_phone_minute"] / old["requests_per_phone_minute"], 3),
            "platform_cpu_ratio": round(platform(new) / platform(old), 3)}


def print_table(report: dict[str, Any]) -> None:
    print(f"{'phase':<24}{'per s':>8}{'api ms':>8}{'pg ms':>8}{'bench ms':>9}{'total ms':>9}{'cores':>7}")
    for name, phase in report["phases"].items():
        cpu = phase["cpu_ms"]
        print(f"{name:<24}{phase['per_s']:>8}{cpu['order api']:>8}{cpu['postgresql']:>8}{cpu['bench']:>9}"
              f"{cpu['total']:>9}{cpu['busy_cores']:>7}{'  errors ' + str(phase['errors']) if phase['errors'] else ''}")
    waiting = report["waiting"]
    print(f"\n{waiting['phones']} phones waiting on the pay page, {waiting['window_s']} s timed, per phone-minute:")
    print(f"{'way':<24}{'requests':>9}{'api ms':>8}{'pg ms':>8}{'bench ms':>9}{'cores':>7}  answers")
    for way in ("polls", "long polls"):
        if way in waiting:
            w, cpu = waiting[way], waiting[way]["cpu_ms_per_phone_minute"]
            print(f"{way:<24}{w['requests_per_phone_minute']:>9}{cpu['order api']:>8}{cpu['postgresql']:>8}"
                  f"{cpu['bench']:>9}{w['busy_cores']:>7}  {w['answers']}")
    if "requests_ratio" in waiting:
        print(f"long polls / polls: requests {waiting['requests_ratio']}, platform CPU {waiting['platform_cpu_ratio']}")
    print(f"load average {report['machine']['loadavg_1m']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with benchmark_broker(VHOST), tempfile.TemporaryDirectory(prefix="bench-front-door-") as workdir:
        report = uvloop.run(run(args, Path(workdir)))
    print_table(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.output}")
    if not report["ok"]:
        print("some answers were not 200/202: see errors above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
