"""Start and stop the real MONAI Label server with this app on 127.0.0.1, for tests and benchmarks.

The server runs as `monailabel start_server --app apps/medsam2`, exactly as a user starts it, in its
own process group so that stopping it also stops the training and scoring subprocesses it spawned.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
BUSY = ("RUNNING", "QUEUED", "SUBMITTED")  # MONAI Label's task states before an outcome


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_server(studies, conf: dict, log: Path, env_extra: dict | None = None, timeout: float = 180,
                  ready_headers: dict | None = None) -> tuple[str, subprocess.Popen]:
    """Start the server on a free loopback port; return its URL once GET /info/ answers 200.

    `ready_headers` go with that readiness probe (a bearer token when authentication is on)."""
    port = free_port()
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(env_extra or {})
    cmd = ["monailabel", "start_server", "--app", str(REPO / "apps" / "medsam2"), "--studies", str(studies),
           "--host", "127.0.0.1", "--port", str(port)]
    for k, v in conf.items():
        cmd += ["--conf", k, str(v)]
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/info/", headers=ready_headers, timeout=5).status_code == 200:
                return url, proc
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"server did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (SIGKILL after 30 s)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for_task(url: str, kind: str, timeout: float, every: float = 1.0) -> dict:
    """Wait until the latest `kind` task (train, scoring) is no longer running; its status ({} if none).

    Raises TimeoutError when it still runs after `timeout` seconds."""
    deadline = time.time() + timeout
    while True:
        r = requests.get(f"{url}/{kind}/", timeout=60)
        status = r.json() if r.status_code == 200 else {}
        if status.get("status") not in BUSY:
            return status
        if time.time() > deadline:
            raise TimeoutError(f"{kind} still {status.get('status')} after {timeout:.0f} s")
        time.sleep(every)
