"""`clip-interpret dashboard` as a supervisor sees it: SIGTERM to the command stops the server and frees its port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
START_S = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_dashboard_command_stops_the_server_and_frees_the_port(tmp_path, sig):
    (tmp_path / "runs").mkdir()
    port = free_port()
    cli = [sys.executable, "-c", "from precompute.cli import main; main()"]
    proc = subprocess.Popen(cli + ["dashboard", "--data-dir", str(tmp_path / "runs"), "--port", str(port)],
                            cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + START_S
        while True:
            assert proc.poll() is None, f"the dashboard exited with {proc.returncode} before it served"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, f"no health answer within {START_S} s"
            time.sleep(0.5)
        proc.send_signal(sig)  # to the command's pid only, as a supervisor (systemd, docker stop) does
        proc.wait(20)
        deadline = time.monotonic() + 10
        while port_open(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not port_open(port), "a server still listens on the port after the command exited"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the session, so a failure leaks nothing
        except ProcessLookupError:
            pass
        proc.wait()
