"""Named fault-injection points for crash tests and ``make chaos``.

``EMETERAI_FAILPOINTS="consumer.after_commit=kill,relay.after_publish=kill"`` makes the process
SIGKILL itself when it reaches that point. Unset (production), each point costs a dict lookup.

Actions: ``kill`` (SIGKILL the process), ``raise`` (``FailpointError``) and ``hang`` (block the
calling thread forever: whatever waits on it with a timeout is guaranteed to time out, however
fast the machine is). Child processes that are not forked from a configured process (a
forkserver's pool) get the spec handed over explicitly: ``spec()`` here, ``configure()`` there.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "EMETERAI_FAILPOINTS"
ACTIONS = ("kill", "raise", "hang")


class FailpointError(RuntimeError):
    pass


def _parse(spec: str) -> dict[str, str]:
    points: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        if action not in ACTIONS:
            raise ValueError(f"{ENV}: action for {name!r} must be one of {', '.join(ACTIONS)}, not {action!r}")
        points[name] = action
    return points


_points = _parse(os.environ.get(ENV, ""))


def spec() -> str:
    """The active failpoints, in the ``EMETERAI_FAILPOINTS`` syntax (to hand to a child process)."""
    return ",".join(f"{name}={action}" for name, action in _points.items())


def configure(new_spec: str) -> None:
    """Replace this process's failpoints (a child process's initializer, a test)."""
    global _points
    _points = _parse(new_spec)


def failpoint(name: str) -> None:
    action = _points.get(name)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise FailpointError(name)
    elif action == "hang":
        threading.Event().wait()  # never set: only a kill (a pool's timeout, the test's end) ends it
