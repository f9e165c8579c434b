"""A three-node RabbitMQ cluster on this machine, from Debian's ``rabbitmq-server``, for the tests of
the distributed path (``make cluster``, the ``rabbit_cluster`` fixture, ``make chaos CLUSTER=1``).

The machine's own broker (``rabbit@<host>``, 5672/25672) is never touched. Each node has its own node
name, ports, data and log directories (under ``root``), and the cluster its own Erlang cookie (in
``root/home/.erlang.cookie``, the nodes' and ``rabbitmqctl``'s ``HOME``).

Network: when this machine allows network namespaces (root, ``ip netns``), each node runs in its own
namespace (``<prefix><i>``) with a veth into a bridge (``<prefix>br``, ``10.77.<k>.1/24``), node i at
``10.77.<k>.1<i>``: a *partition* is then real, the node's link to the bridge set down (it loses its
peers and its clients alike). Without namespaces the nodes listen on 127.0.0.1 with ports of their own,
and the closest honest fault to a partition is a *paused* node (its Erlang VM stopped with SIGSTOP):
``Cluster.partition_kind`` says which one a run used (``EMETERAI_CLUSTER_NETNS=0`` forces the latter).

Node names are short names (``rabbit@<prefix><i>``) resolved by an Erlang ``inetrc`` file
(``ERL_INETRC``), so neither ``/etc/hosts`` nor DNS is changed.

    python -m emeterai_testkit.cluster start|stop|status [--root var/cluster] [--prefix emq]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
"""The scripts themselves: ``/usr/sbin/rabbitmq-server`` would switch to the rabbitmq user (and its HOME)."""
NODES = 3
ERL_ARGS = "+S 1:1 +A 8 +sbwt none +sbwtdcpu none +sbwtdio none"
"""One scheduler each and no busy-waiting: three nodes share this machine with everything else."""


def _run(argv: list[str], *, check: bool = True, timeout: float = 60, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout, env=env)


def netns_available() -> bool:
    """Root, with ``ip netns`` and veth/bridge links allowed (probed by creating and deleting one)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"emqprobe{os.getpid() % 10000}"
    try:
        ok = _run(["ip", "netns", "add", probe], check=False).returncode == 0
        if ok:
            ok = _run(["ip", "link", "add", f"{probe}b", "type", "bridge"], check=False).returncode == 0
            _run(["ip", "link", "del", f"{probe}b"], check=False)
        return ok
    finally:
        _run(["ip", "netns", "del", probe], check=False)


@dataclass(frozen=True)
class Node:
    index: int
    host: str
    """Its short host name (``<prefix><i>``, resolved by the cluster's inetrc) and, in netns mode, its namespace."""
    ip: str
    amqp_port: int
    dist_port: int
    netns: bool

    @property
    def nodename(self) -> str:
        """``rabbit@<host>`` in its own namespace (its own epmd); on loopback ``<host>@localhost``, since
        every node there registers with the machine's one epmd, where the name part must be unique."""
        return f"rabbit@{self.host}" if self.netns else f"{self.host}@localhost"

    def amqp_url(self, vhost: str = "") -> str:
        return f"amqp://guest:guest@{self.ip}:{self.amqp_port}/{vhost}"


class Cluster:
    """Three nodes under ``root``; ``start`` boots and joins them (idempotent), ``stop`` ends them all."""

    def __init__(self, root: Path, *, prefix: str = "emq", netns: bool | None = None, size: int = NODES) -> None:
        self.root = root.resolve()
        self.size = size
        """Three nodes; one for a single node with the very same settings (the replication cost's baseline)."""
        self.prefix = prefix
        if netns is None and os.environ.get("EMETERAI_CLUSTER_NETNS", "") in ("0", "false", "no"):
            netns = False
        self.netns = netns_available() if netns is None else netns
        self._base = 27000 + 10 * (zlib.crc32(prefix.encode()) % 100)
        """Loopback mode: AMQP on 270x0 + i, distribution on 280x0 + i (below the ephemeral range, clear of the
        machine's 5672/25672 and of the services' 8081-10084)."""
        saved = self.root / "subnet"
        k = int(saved.read_text()) if saved.exists() else 100 + zlib.crc32(prefix.encode()) % 100
        self._place(k)

    def _place(self, k: int) -> None:
        self.subnet = f"10.77.{k}"
        self.nodes = [
            Node(i, f"{self.prefix}{i}", f"{self.subnet}.1{i}" if self.netns else "127.0.0.1",
                 5672 if self.netns else self._base + i, 25672 if self.netns else self._base + 1000 + i, self.netns)
            for i in range(1, self.size + 1)]

    def _free_subnet(self) -> None:
        """A subnet no other link of this machine routes (another cluster's bridge), kept in ``root/subnet``."""
        k = int(self.subnet.rsplit(".", 1)[1])
        for step in range(100):
            candidate = 100 + (k - 100 + step) % 100
            if not _run(["ip", "route", "show", f"10.77.{candidate}.0/24"], check=False).stdout.strip():
                self._place(candidate)
                self.root.mkdir(parents=True, exist_ok=True)
                (self.root / "subnet").write_text(str(candidate))
                return
        raise RuntimeError("no free 10.77.1xx.0/24 subnet for the cluster's bridge")

    # -- naming ------------------------------------------------------------------------------------------

    @property
    def partition_kind(self) -> str:
        return ("network partition (the node's veth to the cluster bridge down: it loses peers and clients)"
                if self.netns else "paused node (SIGSTOP of its Erlang VM: no network namespaces on this machine)")

    def urls(self, vhost: str = "") -> list[str]:
        return [n.amqp_url(vhost) for n in self.nodes]

    def node(self, which: int | str) -> Node:
        for n in self.nodes:
            if which in (n.index, n.host, n.nodename):
                return n
        raise KeyError(which)

    def _dir(self, node: Node) -> Path:
        return self.root / node.host

    def _env(self, node: Node | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(HOME=str(self.root / "home"), ERL_INETRC=str(self.root / "inetrc"),
                   RABBITMQ_CONF_ENV_FILE=str(self.root / "rabbitmq-env.conf"),
                   RABBITMQ_ENABLED_PLUGINS_FILE=str(self.root / "enabled_plugins"),
                   LC_ALL="C.UTF-8", LANG="C.UTF-8")
        env["PATH"] = f"{RABBIT_BIN}:/usr/sbin:/usr/bin:/sbin:/bin"
        if node is not None:
            d = self._dir(node)
            env.update(RABBITMQ_NODENAME=node.nodename, RABBITMQ_NODE_IP_ADDRESS=node.ip,
                       RABBITMQ_NODE_PORT=str(node.amqp_port), RABBITMQ_DIST_PORT=str(node.dist_port),
                       RABBITMQ_MNESIA_BASE=str(d / "mnesia"), RABBITMQ_MNESIA_DIR=str(d / "mnesia" / node.host),
                       RABBITMQ_LOG_BASE=str(d / "log"), RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
                       RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
                       RABBITMQ_PID_FILE=str(d / "pid"), RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=ERL_ARGS)
        return env

    # -- commands ----------------------------------------------------------------------------------------

    def ctl(self, node: Node | int | str, *args: str, check: bool = True, timeout: float = 60,
            tool: str = "rabbitmqctl") -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n <node> args`` with the cluster's cookie (``tool``: rabbitmq-queues, ...)."""
        n = node if isinstance(node, Node) else self.node(node)
        done = _run([str(RABBIT_BIN / tool), "-n", n.nodename, *args], check=False, timeout=timeout,
                    env=self._env())
        if check and done.returncode != 0:
            raise RuntimeError(f"{tool} -n {n.nodename} {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stdout}\n{done.stderr}")
        return done

    def _write_files(self) -> None:
        home = self.root / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16).upper())
            cookie.chmod(0o400)
        (self.root / "rabbitmq-env.conf").write_text("# the cluster's nodes read no /etc/rabbitmq/rabbitmq-env.conf\n")
        (self.root / "enabled_plugins").write_text("[].\n")
        names: dict[str, list[str]] = {}
        for n in self.nodes:  # one line per address: a second line for the same address replaces the first
            names.setdefault(n.ip, []).append(f'"{n.host}"')
        hosts = "".join(f'{{host, {{{ip.replace(".", ",")}}}, [{", ".join(hs)}]}}.\n' for ip, hs in names.items())
        (self.root / "inetrc").write_text(hosts + "{lookup, [file, native]}.\n")
        for n in self.nodes:
            d = self._dir(n)
            (d / "log").mkdir(parents=True, exist_ok=True)
            (d / "rabbitmq.conf").write_text(
                f"listeners.tcp.1 = {n.ip}:{n.amqp_port}\n"
                "loopback_users = none\n"
                "cluster_partition_handling = pause_minority\n"
                "net_ticktime = 10\n"
                "disk_free_limit.absolute = 50MB\n"
                "vm_memory_high_watermark.absolute = 1GB\n"
                "log.console = false\n"
                "log.file.level = info\n")

    # -- network -----------------------------------------------------------------------------------------

    def _ip(self, *args: str, check: bool = True) -> None:
        done = _run(["ip", *args], check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")

    def _netns_up(self) -> None:
        bridge = f"{self.prefix}br"
        if _run(["ip", "link", "show", bridge], check=False).returncode != 0:
            self._free_subnet()
            self._ip("link", "add", bridge, "type", "bridge")
            self._ip("addr", "add", f"{self.subnet}.1/24", "dev", bridge)
        self._ip("link", "set", bridge, "up")
        existing = _run(["ip", "netns", "list"], check=False).stdout.split()
        for n in self.nodes:
            if n.host not in existing:
                self._ip("netns", "add", n.host)
            self._ip("netns", "exec", n.host, "ip", "link", "set", "lo", "up")
            outer, inner = f"{n.host}h", f"{n.host}n"
            if _run(["ip", "link", "show", outer], check=False).returncode != 0:
                self._ip("link", "add", outer, "type", "veth", "peer", "name", inner)
                self._ip("link", "set", inner, "netns", n.host)
                self._ip("netns", "exec", n.host, "ip", "addr", "add", f"{n.ip}/24", "dev", inner)
                self._ip("link", "set", outer, "master", bridge)
            self._ip("netns", "exec", n.host, "ip", "link", "set", inner, "up")
            self._ip("link", "set", outer, "up")

    def _netns_down(self) -> None:
        for n in self.nodes:
            self._ip("link", "del", f"{n.host}h", check=False)
            self._ip("netns", "del", n.host, check=False)
        self._ip("link", "del", f"{self.prefix}br", check=False)

    # -- nodes -------------------------------------------------------------------------------------------

    def pid(self, node: Node | int | str) -> int | None:
        """The node's Erlang VM (its pid file; None when it is not running)."""
        n = node if isinstance(node, Node) else self.node(node)
        with contextlib.suppress(OSError, ValueError):
            pid = int((self._dir(n) / "pid").read_text().strip())
            os.kill(pid, 0)
            return pid
        return None

    def launch(self, node: Node | int | str) -> None:
        """Boot one node's VM in the background (detached: it outlives this process)."""
        n = node if isinstance(node, Node) else self.node(node)
        if self.pid(n) is not None:
            return
        argv = [str(RABBIT_BIN / "rabbitmq-server")]
        if self.netns:
            argv = ["ip", "netns", "exec", n.host, *argv]
        with (self._dir(n) / "log" / "console.log").open("ab") as log:
            proc = subprocess.Popen(argv, env=self._env(n), cwd=self._dir(n), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        (self._dir(n) / "pid").write_text(str(proc.pid))

    def await_node(self, node: Node | int | str, timeout_s: float = 180) -> None:
        n = node if isinstance(node, Node) else self.node(node)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.ctl(n, "await_startup", "--timeout", "30", check=False, timeout=45).returncode == 0:
                return
            if time.monotonic() > deadline:
                log = self._dir(n) / "log" / "console.log"
                raise RuntimeError(f"{n.nodename} did not boot in {timeout_s}s: see {log}\n"
                                   + (log.read_text()[-2000:] if log.exists() else ""))
            time.sleep(1)

    def running_nodes(self, via: Node | int | str | None = None) -> list[str]:
        """The cluster's running nodes as one node sees them (empty when it does not answer)."""
        for n in ([via] if via is not None else self.nodes):
            done = self.ctl(n, "eval", "rabbit_nodes:all_running().", check=False, timeout=30)
            if done.returncode == 0:
                return sorted(x.strip(" '[]\n") for x in done.stdout.split(",") if x.strip(" '[]\n"))
        return []

    def start(self, log: Callable[[str], None] = print) -> None:
        """Boot the three nodes and join 2 and 3 to 1 (nodes already running and joined are left as they are)."""
        if not shutil.which("erl") or not (RABBIT_BIN / "rabbitmq-server").exists():
            raise RuntimeError("Debian's rabbitmq-server is not installed (scripts/ensure-servers installs it)")
        if self.netns:
            self._netns_up()
        self._write_files()
        for n in self.nodes:
            self.launch(n)
        for n in self.nodes:
            self.await_node(n)
        first = self.nodes[0]
        for n in self.nodes[1:]:
            if first.nodename in self.running_nodes(n):
                continue
            self.ctl(n, "stop_app")
            self.ctl(n, "join_cluster", first.nodename)
            self.ctl(n, "start_app", timeout=180)
        self.wait_running(self.size)
        log(f"cluster: {', '.join(n.nodename for n in self.nodes)} running and joined "
            f"({'network namespaces' if self.netns else 'loopback'}; AMQP {', '.join(self.urls())}; "
            f"files in {self.root})")

    def wait_running(self, count: int, timeout_s: float = 180, via: Node | int | str | None = None) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            running = self.running_nodes(via)
            if len(running) >= count:
                return running
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster: {len(running)} of {count} nodes running after {timeout_s}s: {running}")
            time.sleep(1)

    def stop_node(self, node: Node | int | str, timeout_s: float = 120) -> None:
        """A clean stop of one node (``rabbitmqctl stop``), waiting for its VM to exit."""
        n = node if isinstance(node, Node) else self.node(node)
        pid = self.pid(n)
        if pid is None:
            return
        self.ctl(n, "stop", check=False, timeout=timeout_s)
        self._wait_gone(pid, timeout_s)

    def kill_node(self, node: Node | int | str) -> int | None:
        """SIGKILL of the node's VM; its pid (None when it was not running)."""
        n = node if isinstance(node, Node) else self.node(node)
        pid = self.pid(n)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, 30)
        return pid

    @staticmethod
    def _wait_gone(pid: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)

    def partition(self, node: Node | int | str) -> None:
        """Cut the node away from the others (see the module's text for how)."""
        n = node if isinstance(node, Node) else self.node(node)
        if self.netns:
            self._ip("link", "set", f"{n.host}h", "down")
        else:
            pid = self.pid(n)
            if pid is not None:
                os.kill(pid, signal.SIGSTOP)

    def heal(self, node: Node | int | str) -> None:
        n = node if isinstance(node, Node) else self.node(node)
        if self.netns:
            self._ip("link", "set", f"{n.host}h", "up")
        else:
            pid = self.pid(n)
            if pid is not None:
                os.kill(pid, signal.SIGCONT)

    def restart_node(self, node: Node | int | str) -> None:
        n = node if isinstance(node, Node) else self.node(node)
        self.launch(n)
        self.await_node(n)

    def stop(self, log: Callable[[str], None] = print) -> None:
        """Stop every node (cleanly, then SIGKILL what remains), and remove the namespaces and links."""
        for n in self.nodes:
            if self.netns:
                self._ip("link", "set", f"{n.host}h", "up", check=False)
            self.stop_node(n, timeout_s=60)
        for n in self.nodes:
            self.kill_node(n)
            if self.netns:
                # epmd, started by the node inside its namespace: ours to end
                pids = _run(["ip", "netns", "pids", n.host], check=False).stdout.split()
                for pid in pids:
                    with contextlib.suppress(OSError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
        if self.netns:
            self._netns_down()
        log(f"cluster: stopped ({self.root})")

    def status(self) -> dict[str, object]:
        return {"nodes": {n.nodename: {"pid": self.pid(n), "amqp": n.amqp_url()} for n in self.nodes},
                "running": self.running_nodes(), "network": "netns" if self.netns else "loopback"}

    def ensure_vhost(self, vhost: str) -> list[str]:
        """A fresh vhost on the cluster (guest may use it); the AMQP URL of every node for it."""
        first = self.nodes[0]
        self.ctl(first, "delete_vhost", vhost, check=False)
        self.ctl(first, "add_vhost", vhost)
        self.ctl(first, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        return self.urls(vhost)

    def quorum_queues(self, vhost: str, via: Node | int | str | None = None, timeout_s: float = 60
                      ) -> list[dict[str, Any]]:
        """Every quorum queue of ``vhost``: name, leader, members, online (as one node reports them).

        One ``eval`` on the node rather than ``list_queues``: the latter has every node send its rows to
        the CLI's own Erlang node, which nodes inside namespaces cannot reach."""
        self._check_vhost(vhost)
        expr = ('lists:foreach(fun(Q) -> case amqqueue:get_type(Q) of rabbit_quorum_queue -> '
                '[{name,N},{leader,L},{members,M},{online,O}] = rabbit_amqqueue:info(Q,[name,leader,members,online]), '
                'io:format("~s|~s|~s|~s~n",[element(4,N),L,lists:join(",",[atom_to_list(X)||X<-M]),'
                'lists:join(",",[atom_to_list(X)||X<-O])]); _ -> ok end end, '
                f'rabbit_amqqueue:list(<<"{vhost}">>)), ok.')
        for n in ([via] if via is not None else self.nodes):
            if self.pid(n) is None:
                continue
            try:
                done = self.ctl(n, "eval", expr, check=False, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                continue
            if done.returncode == 0:
                rows = []
                for line in done.stdout.splitlines():
                    parts = line.split("|")
                    if len(parts) == 4:
                        rows.append({"name": parts[0], "leader": parts[1],
                                     "members": [m for m in parts[2].split(",") if m],
                                     "online": [m for m in parts[3].split(",") if m]})
                return rows
        return []

    def connections(self) -> dict[str, int]:
        """Client connections per running node (a node that does not answer is left out)."""
        out = {}
        for n in self.nodes:
            if self.pid(n) is None:
                continue
            done = self.ctl(n, "eval", "length(rabbit_networking:connections_local()).", check=False, timeout=20)
            if done.returncode == 0 and done.stdout.strip().isdigit():
                out[n.nodename] = int(done.stdout.strip())
        return out

    def queue_depths(self, vhost: str) -> dict[str, int]:
        """Messages (ready and unacknowledged) of every queue of ``vhost``, as ``invariants.queue_depths``
        gives them for the machine's broker (one ``eval``: see ``quorum_queues``)."""
        self._check_vhost(vhost)
        expr = ('lists:foreach(fun(Q) -> [{name,N},{messages,M}] = rabbit_amqqueue:info(Q,[name,messages]), '
                f'io:format("~s ~p~n",[element(4,N),M]) end, rabbit_amqqueue:list(<<"{vhost}">>)), ok.')
        for n in self.nodes:
            if self.pid(n) is None:
                continue
            done = self.ctl(n, "eval", expr, check=False, timeout=60)
            if done.returncode == 0:
                depths = {}
                for line in done.stdout.splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[1].isdigit():
                        depths[parts[0]] = int(parts[1])
                return depths
        raise RuntimeError(f"no cluster node answered list of queues of {vhost}")

    @staticmethod
    def _check_vhost(vhost: str) -> None:
        if not vhost.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"vhost {vhost!r}: letters, digits, - and _ only")

    def wait_healthy(self, vhost: str, timeout_s: float = 180) -> tuple[bool, str]:
        """Wait until all three nodes run and every quorum queue of ``vhost`` has a leader and three members
        online; (healthy, what the broker reported last)."""
        deadline = time.monotonic() + timeout_s
        while True:
            running = self.running_nodes()
            ok, summary = self.quorum_healthy(vhost)
            if ok and len(running) == self.size:
                return True, f"{len(running)} nodes running; {summary}"
            if time.monotonic() > deadline:
                return False, f"running {running}; {summary}"
            time.sleep(1)

    def quorum_healthy(self, vhost: str, via: Node | int | str | None = None, timeout_s: float = 60
                       ) -> tuple[bool, str]:
        """Every quorum queue of ``vhost`` has a leader and all three members online; and a summary."""
        queues = self.quorum_queues(vhost, via, timeout_s)
        if not queues:
            return False, f"no answer about the quorum queues within {timeout_s:.0f}s"
        bad = [q["name"] for q in queues
               if not q.get("leader") or len(q.get("online") or []) < self.size]
        leaders: dict[str, int] = {}
        for q in queues:
            leaders[q["leader"]] = leaders.get(q["leader"], 0) + 1
        summary = (f"{len(queues)} quorum queues, leaders {dict(sorted(leaders.items()))}"
                   + (f"; not healthy: {bad[:5]}" if bad else f"; all with a leader and {self.size} members online"))
        return bool(queues) and not bad, summary


@contextlib.contextmanager
def running_cluster(root: Path, *, prefix: str = "emq", log: Callable[[str], None] = print,
                    size: int = NODES) -> Iterator[Cluster]:
    """``with running_cluster(dir) as c``: started (fresh data) and always stopped on exit."""
    c = Cluster(root, prefix=prefix, size=size)
    c.stop(log=lambda _: None)
    shutil.rmtree(c.root, ignore_errors=True)
    try:
        c.start(log=log)
        yield c
    finally:
        c.stop(log=log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emeterai_testkit.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("--root", default="var/cluster", help="data, logs and cookie (default var/cluster)")
    parser.add_argument("--prefix", default="emq", help="node host names and namespaces: <prefix>1..3")
    args = parser.parse_args(argv)
    c = Cluster(Path(args.root), prefix=args.prefix)
    if args.command == "start":
        c.start()
    elif args.command == "stop":
        c.stop()
    else:
        import json

        print(json.dumps(c.status(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
