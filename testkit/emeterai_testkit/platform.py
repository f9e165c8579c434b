"""Run services as real processes (api, worker, relay) for cross-service tests and benchmarks.

Each process gets its service's settings through the environment, exactly as in production;
tests can SIGKILL, SIGTERM and restart any of them.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from emeterai_shared.config import ServiceSettings
from emeterai_shared.runtime import ServiceDefinition

from emeterai_testkit.fixtures import REPO_ROOT, reset_service, settings_env

KINDS = ("api", "worker", "relay")


@dataclass
class Proc:
    service: str
    kind: str
    env: dict[str, str]
    port: int
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self, extra_env: dict[str, str] | None = None) -> None:
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


@dataclass
class Platform:
    """A set of services, each as api + worker + relay processes."""

    logs: Path
    settings: dict[str, ServiceSettings] = field(default_factory=dict)
    procs: dict[tuple[str, str], Proc] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment of every process added afterwards (e.g. ``OTEL_EXPORTER_OTLP_ENDPOINT``)."""

    def add(self, defn: ServiceDefinition, settings: ServiceSettings) -> None:
        self.settings[defn.name] = settings
        env = {**settings_env(settings), **self.env}
        ports = {"api": settings.http_port, "worker": settings.worker_metrics_port,
                 "relay": settings.relay_metrics_port}
        for kind in KINDS:
            self.procs[(defn.name, kind)] = Proc(defn.name, kind, env, ports[kind],
                                                 self.logs / f"{defn.name}-{kind}.log")

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.settings[service].http_port}"

    def proc(self, service: str, kind: str) -> Proc:
        return self.procs[(service, kind)]

    async def start(self, *which: tuple[str, str], extra_env: dict[str, str] | None = None) -> None:
        targets = [self.procs[w] for w in which] if which else list(self.procs.values())
        for p in targets:
            p.start(extra_env)
        await asyncio.gather(*(wait_ready(p) for p in targets))

    async def restart(self, service: str, kind: str, extra_env: dict[str, str] | None = None) -> None:
        p = self.proc(service, kind)
        p.kill()
        await self.start((service, kind), extra_env=extra_env)

    def stop(self) -> None:
        for p in self.procs.values():
            p.signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
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


async def prepare(defns: list[ServiceDefinition], settings: list[ServiceSettings]) -> None:
    """Fresh databases and queues for every service before the processes start."""
    for defn, s in zip(defns, settings, strict=True):
        await reset_service(defn, s)
