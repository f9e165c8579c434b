"""The test harness's own guards on the shared servers, against the real RabbitMQ: scratch vhosts
are claimed and cleaned up (left behind, their quorum queues exhaust the broker's file handles and
a restart never finishes booting), a broker that keeps the port open but does not answer is told
apart from one that answers, a restart is refused when the broker could not boot again, ports are
never handed out twice, and a forked service process starts and ends as ``python -m`` would."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from emeterai_shared import failpoints
from emeterai_testkit import fixtures, forked
from emeterai_testkit.fixtures import (
    NAMESPACE,
    SCRATCH_DESCRIPTION,
    broker_answers,
    claimed_vhost,
    fresh_vhost,
    prune_scratch_vhosts,
    rabbitmqctl,
    require_restart_headroom,
)


def vhosts() -> dict[str, str]:
    out = rabbitmqctl("-q", "list_vhosts", "name", "description", "--no-table-headers").stdout
    return {name: description.strip() for name, _, description in (line.partition("\t") for line in out.splitlines())}


@contextlib.contextmanager
def silent_listener() -> Iterator[tuple[str, int]]:
    """A port that accepts connections and never says a word (a wedged broker, seen from outside)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


def test_the_broker_answers_the_amqp_handshake(servers: str) -> None:
    assert broker_answers()


def test_an_open_port_that_never_answers_is_not_a_broker() -> None:
    with silent_listener() as address:
        assert not broker_answers(timeout_s=0.5, address=address)


def test_a_closed_port_is_not_a_broker() -> None:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        address = s.getsockname()  # bound, never listening: connections are refused
        assert not broker_answers(timeout_s=0.5, address=address)


def test_unclaimed_scratch_vhosts_are_pruned_and_claimed_ones_kept(servers: str) -> None:
    left_behind, in_use = f"emeterai_{NAMESPACE}_left_behind", f"emeterai_{NAMESPACE}_in_use"
    with claimed_vhost(in_use):
        fresh_vhost(left_behind)  # as a killed run leaves it: scratch, nobody holds its claim
        assert vhosts()[left_behind] == SCRATCH_DESCRIPTION
        assert vhosts()[in_use] == SCRATCH_DESCRIPTION
        pruned = prune_scratch_vhosts()
        assert left_behind in pruned and in_use not in pruned
        assert left_behind not in vhosts() and in_use in vhosts()
    assert in_use not in vhosts()  # the claim's end deletes it
    fresh_vhost(left_behind)
    with claimed_vhost(in_use):  # and every claim first prunes what was left behind
        assert left_behind not in vhosts()


def test_a_vhost_cannot_be_claimed_twice_and_other_vhosts_are_never_pruned(servers: str) -> None:
    mine = f"emeterai_{NAMESPACE}_claimed"
    foreign = f"emeterai_{NAMESPACE}_not_scratch"  # e.g. the one `make run` uses
    rabbitmqctl("delete_vhost", foreign, check=False)
    rabbitmqctl("add_vhost", foreign)
    try:
        with claimed_vhost(mine):
            with pytest.raises(RuntimeError, match="in use by another run"), claimed_vhost(mine):
                pass
            assert mine in vhosts()
        assert foreign not in prune_scratch_vhosts()
        assert foreign in vhosts()
    finally:
        rabbitmqctl("delete_vhost", foreign, check=False)


def test_the_session_vhost_is_claimed(servers: str) -> None:
    assert vhosts()[fixtures.VHOST] == SCRATCH_DESCRIPTION
    assert fixtures.VHOST not in prune_scratch_vhosts()


def test_a_restart_is_refused_when_the_broker_could_not_boot_again(
    servers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fixtures.broker_file_handles()  # the live broker's figures, read from rabbitmqctl
    assert real["total_limit"] > real["total_used"] > 0
    # how many it uses now depends on the other sessions on the machine (the suite's two workers
    # together hold about half of a default broker's handles), so use is given, around its limit
    limit = real["total_limit"]
    monkeypatch.setattr(fixtures, "broker_file_handles", lambda: {"total_used": limit // 4, "total_limit": limit})
    require_restart_headroom()  # room to spare
    monkeypatch.setattr(fixtures, "broker_file_handles", lambda: {"total_used": limit - 10, "total_limit": limit})
    with pytest.raises(RuntimeError, match="would not finish booting") as refused:
        require_restart_headroom()
    assert fixtures.VHOST in str(refused.value)


def test_free_ports_are_distinct_outside_the_ephemeral_range_and_claimed_against_other_sessions() -> None:
    # bind(0) hands out ephemeral ports: an outgoing connection could take one before the server
    # binds it, and two calls could return the same port (a relay once failed to bind this way)
    ephemeral = fixtures._ephemeral_ports()
    ports = [fixtures.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert not any(port in ephemeral for port in ports)
    for port in ports[:5]:
        with contextlib.closing(socket.socket()) as s:
            s.bind(("127.0.0.1", port))  # nobody listens on it
    # another process (another test session) cannot claim a port this one holds
    claimed = ports[0]
    script = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR)\n"
              "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('got')\n"
              "except OSError:\n    print('refused')\n")
    out = subprocess.run([sys.executable, "-c", script, str(fixtures._PORT_CLAIMS / f"{claimed}.lock")],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "refused"


SAMPLE = "emeterai_testkit.sample_process"


def _sample_env() -> dict[str, str]:
    return {**os.environ, "EMETERAI_SAMPLE": "given", failpoints.ENV: "relay.after_publish=kill"}


@pytest.mark.parametrize("what", ["exit:0", "exit:3"])
def test_a_forked_process_starts_and_exits_as_python_m_would(tmp_path: Path, what: str) -> None:
    forked.enable()
    env = _sample_env()
    child = forked.start(SAMPLE, what, env, tmp_path, tmp_path / "forked.log")
    with (tmp_path / "popen.log").open("ab") as log:
        popen = subprocess.Popen([sys.executable, "-m", SAMPLE, what], env=env, cwd=tmp_path, stdout=log,
                                 stderr=subprocess.STDOUT)
    assert child.wait(60) == popen.wait(60) == int(what.removeprefix("exit:"))
    assert child.returncode == child.poll() == popen.returncode
    # its own environment, directory and failpoints, not the forkserver's
    expected = f"argument={what} cwd={tmp_path} sample=given failpoints=relay.after_publish=kill\n"
    assert (tmp_path / "forked.log").read_text() == (tmp_path / "popen.log").read_text() == expected


def test_a_forked_process_ended_by_a_signal_has_popens_exit_code(tmp_path: Path) -> None:
    forked.enable()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        log = tmp_path / f"{sig.name}.log"
        child = forked.start(SAMPLE, "wait", _sample_env(), tmp_path, log)
        deadline = time.monotonic() + 60
        while "argument=wait" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.poll() is None and child.returncode is None
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(0.01)  # still running
        child.send_signal(sig)
        assert child.wait(60) == -sig
        child.send_signal(signal.SIGTERM)  # after the end: nothing to signal, no error
