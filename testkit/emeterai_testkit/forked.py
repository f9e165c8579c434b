"""Service processes forked from a process that has already imported the services (tests only).

A service process started as ``python -m <svc>_service <kind>`` spends 1.5 to 3 s of CPU importing
aiohttp, aio-pika, asyncpg, pydantic, OpenTelemetry and the service before it does anything, and
the suite starts a few hundred of them. With ``enable()`` (the pytest plugin calls it), ``start``
forks them instead from a multiprocessing forkserver that imported the four services once (their
``bootstrap`` modules: a ``<svc>_service.__main__`` runs the service when imported): each child
sets its environment, working directory and log file as ``Popen`` would have, then runs
``<svc>_service`` as ``__main__``, as ``python -m`` does. ``Forked`` offers what the test kit uses
of ``subprocess.Popen`` (``pid``, ``returncode``, ``poll``, ``wait``, ``send_signal``, ``kill``),
with the same exit codes (a signal's is negative). With ``EMETERAI_TEST_FORK=0`` the tests start
them as ``python -m`` again. Benchmarks keep real ``Popen`` starts: a forked child shares its pages
with the server until it writes them, which would blur memory figures.

What a child must not inherit from the server: the failpoints the server read from its own
environment at import (``failpoints.configure`` runs again with the child's) and its random state
(the ``random`` module reseeds after a fork by itself; everything else draws from ``os.urandom``).
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.context
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

from emeterai_shared import failpoints

SERVICES = ("order", "payment", "minting", "stamping")

_context: multiprocessing.context.ForkServerContext | None = None
_started: list[Forked] = []


def enable() -> None:
    """Fork service processes from now on (the forkserver itself starts with the first of them)."""
    global _context
    if _context is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["emeterai_shared.runtime",
                                        *(f"{service}_service.bootstrap" for service in SERVICES)])
        _context = context
        atexit.register(_kill_leftovers)  # before multiprocessing's own exit hook, which would join them


def enabled() -> bool:
    return _context is not None


class Forked:
    """A forked service process, used as the test kit uses ``subprocess.Popen``."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(f"forked {self._process.name}", timeout or 0.0)
        return code

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start(module: str, kind: str, env: dict[str, str], cwd: Path, log_path: Path) -> Forked:
    """``python -m <module> <kind>`` with ``env``, in ``cwd``, stdout and stderr appended to ``log_path``."""
    assert _context is not None, "enable() first"
    process = _context.Process(target=_main, args=(module, kind, env, str(cwd), str(log_path)),
                               name=f"{module} {kind}")
    process.start()
    forked = Forked(process)
    _started.append(forked)
    _started[:] = [f for f in _started if f.returncode is None]
    return forked


def _main(module: str, kind: str, env: dict[str, str], cwd: str, log_path: str) -> None:
    """In the child: what ``Popen(..., env=env, cwd=cwd, stdout=log, stderr=STDOUT)`` and ``python -m``
    would have set up, then the module as ``__main__``."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    failpoints.configure(env.get(failpoints.ENV, ""))
    sys.argv = [module, kind]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        atexit._run_exitfuncs()  # a multiprocessing child ends with os._exit, which skips them
        sys.stdout.flush()
        sys.stderr.flush()


def _kill_leftovers() -> None:
    for forked in _started:
        forked.kill()
