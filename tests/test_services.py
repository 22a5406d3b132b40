"""``churnflow services up|status|down`` start real services on loopback and stop exactly them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from engine.services import is_alive, read_services

pytestmark = pytest.mark.integration


def churnflow(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHURNFLOW_RUN_DIR": str(run_dir)}
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], env=env, capture_output=True, text=True
    )


def test_up_status_down(tmp_path: Path) -> None:
    up = churnflow(tmp_path, "services", "up")
    assert up.returncode == 0, up.stderr
    services = read_services(tmp_path)
    assert set(services) == {"broker", "redis"}
    try:
        for service in services.values():
            assert service.host == "127.0.0.1"
            assert is_alive(service)
        # nothing listens on the wildcard address for these ports
        for service in services.values():
            with socket.socket() as probe:
                probe.settimeout(0.5)
                assert probe.connect_ex(("127.0.0.2", service.port)) != 0
        assert redis.Redis(port=services["redis"].port).ping()
        # a second `up` reuses the running services instead of starting more
        again = churnflow(tmp_path, "services", "up")
        assert again.returncode == 0 and read_services(tmp_path) == services
        status = churnflow(tmp_path, "services", "status")
        assert status.returncode == 0 and status.stdout.count("\tup") == 2
    finally:
        down = churnflow(tmp_path, "services", "down")
    assert down.returncode == 0, down.stderr
    assert all(not is_alive(s) for s in services.values())
    assert read_services(tmp_path) == {}
    assert churnflow(tmp_path, "services", "status").returncode == 1


def test_help_lists_the_commands(tmp_path: Path) -> None:
    out = churnflow(tmp_path, "--help").stdout
    for command in ("services", "run", "api", "keys", "produce", "demo", "replay"):
        assert command in out
