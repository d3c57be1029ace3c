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


def free_port_run(count: int) -> int:
    """A port p with p .. p + count - 1 all free on 127.0.0.1 (a balancer and its replicas)."""
    while True:
        base = free_port()
        if base + count <= 65536 and all(_free(p) for p in range(base + 1, base + count)):
            return base


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def wait_until_answers(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None,
                       headers: dict | None = None, every: float = 0.5) -> bool:
    """Wait until GET `url` answers 200; False after `timeout` seconds. Raises RuntimeError (with the end of
    `log`) when `proc` exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text()[-3000:] if log else ''}")
        try:
            if requests.get(url, headers=headers, timeout=5).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(every)
    return False


def launch_replicas(studies, conf_args: list[str], run_dir: Path, replicas: int = 2, options: list[str] = (),
                    env_extra: dict | None = None, timeout: float = 600) -> tuple[str, subprocess.Popen]:
    """`scripts/replicas.py`: `replicas` servers behind nginx on 127.0.0.1; the balancer's URL once its
    /info/ answers. `options` go to replicas.py (e.g. --fail-timeout 3), `conf_args` to every server."""
    port = free_port_run(replicas + 1)
    cmd = [sys.executable, str(REPO / "scripts" / "replicas.py"), "--replicas", str(replicas), "--port", str(port),
           "--studies", str(studies), "--run-dir", str(run_dir), *options, "--", *conf_args]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           **(env_extra or {})}
    log = run_dir / "replicas.out"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    if not wait_until_answers(f"{url}/info/", timeout, proc, log, every=1.0):
        stop_server(proc)
        raise RuntimeError(f"the replicas did not come up within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
    return url, proc


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
    try:
        if wait_until_answers(f"{url}/info/", timeout, proc, log, headers=ready_headers):
            return url, proc
    except RuntimeError as e:
        raise RuntimeError(f"server {e}") from None
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
