"""Named fault-injection points for crash tests and ``make chaos``.

``EMETERAI_FAILPOINTS="consumer.after_commit=kill,relay.after_publish=kill"`` makes the process
SIGKILL itself when it reaches that point. Unset (production), each point costs a dict lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "EMETERAI_FAILPOINTS"


class FailpointError(RuntimeError):
    pass


def _parse(spec: str) -> dict[str, str]:
    points: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        if action not in ("kill", "raise"):
            raise ValueError(f"{ENV}: action for {name!r} must be kill or raise, not {action!r}")
        points[name] = action
    return points


_points = _parse(os.environ.get(ENV, ""))


def failpoint(name: str) -> None:
    action = _points.get(name)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise FailpointError(name)
