"""N replicas of the server behind nginx on one machine: `REPLICAS=N bash scripts/start.sh`.

Each replica is `monailabel start_server` on 127.0.0.1:<PORT + n> (n = 1..N; one GPU each, through
CUDA_VISIBLE_DEVICES, when there are GPUs), all on the same studies and the same model folder. nginx
(Debian's package) listens on HOST:PORT and sends every request about one image to one replica:
consistent hashing on the image id (`?image=` of /infer, /datastore, label saves; the series UID of a
DICOMweb read through /proxy/dicom, which is the image id), so the image's session and its encoded
slices live in one process. Requests about no image go to any replica. When a replica fails (refused
connection, timeout, 502/503) nginx tries the next one on the ring and leaves the failed one out for
`fail_timeout`; a replica that answers /ready with 503 (model not loaded) is never the only choice.

The nginx configuration is generated here (`nginx_config`) into the run folder; the same routing rule
for Kubernetes is in docs/deployment.md. Ctrl-C (or SIGTERM) stops nginx and every replica.

    python scripts/replicas.py --replicas 2 --port 8000 --studies sample-data/studies -- --conf checkpoint demo
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]

# The key a request is routed by: the image it is about, or (no image) a per-request id, which spreads
# those requests over the replicas. OHIF reads a series as /proxy/dicom/<op>/studies/<s>/series/<id>/...
NGINX_TEMPLATE = """\
worker_processes 1;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
  access_log {run}/access.log;
  client_body_temp_path {run}/client_body;
  proxy_temp_path {run}/proxy;
  fastcgi_temp_path {run}/fastcgi;
  uwsgi_temp_path {run}/uwsgi;
  scgi_temp_path {run}/scgi;
  client_max_body_size 0;
  proxy_read_timeout 900s;
  proxy_send_timeout 900s;
  # request bodies buffered (the default): a request whose replica died mid-way can be sent to the next one
  proxy_request_buffering on;
  map $uri $series_in_path {{
    default "";
    "~^/proxy/dicom/[^/]+/studies/[^/]+/series/(?<series>[0-9.]+)" $series;
  }}
  map "$arg_image$series_in_path" $image_key {{
    "" $request_id;
    default "$arg_image$series_in_path";
  }}
  upstream medsam2 {{
    hash $image_key consistent;
{servers}
  }}
  server {{
    listen {host}:{port};
    location / {{
      proxy_pass http://medsam2;
      proxy_http_version 1.1;
      proxy_set_header Host $host:$server_port;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_next_upstream error timeout http_502 http_503 non_idempotent;
      proxy_next_upstream_tries 0;
    }}
  }}
}}
"""


def nginx_config(host: str, port: int, replica_ports: list[int], run_dir: Path, fail_timeout_s: int = 10) -> str:
    servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout={fail_timeout_s}s;" for p in replica_ports)
    user = "user root;" if os.geteuid() == 0 else ""  # workers run as the master's user (temp paths are its)
    return NGINX_TEMPLATE.format(run=run_dir, user=user, servers=servers, host=host, port=port)


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


def start_replicas(n: int, host: str, port: int, studies: str, extra: list[str], run_dir: Path,
                   env: dict | None = None) -> list[subprocess.Popen]:
    """The N servers, each logging to run_dir/replica-<k>.log; one GPU each when there are GPUs."""
    gpus = gpu_count()
    procs = []
    for k in range(1, n + 1):
        child_env = {**os.environ, **(env or {})}
        if gpus:
            child_env["CUDA_VISIBLE_DEVICES"] = str((k - 1) % gpus)
        log = open(run_dir / f"replica-{k}.log", "w")
        monailabel = str(Path(sys.executable).parent / "monailabel")
        cmd = [monailabel, "start_server", "--app", str(REPO / "apps" / "medsam2"),
               "--studies", studies, "--host", "127.0.0.1", "--port", str(port + k),
               "--conf", "replica", f"r{k}", "--conf", "balancer_url", f"http://{host}:{port}", *extra]
        # its own process group: stopping it also stops the training and scoring subprocesses it spawns
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env, cwd=REPO,
                                      start_new_session=True))
    return procs


def wait_ready(ports: list[int], procs: list[subprocess.Popen], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    pending = set(ports)
    while pending and time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a replica exited with {proc.returncode} (see its log in the run folder)")
        for p in list(pending):
            try:
                r = requests.get(f"http://127.0.0.1:{p}/ready", timeout=5)
            except requests.RequestException:
                continue  # not listening yet
            if r.status_code == 200:
                pending.discard(p)
            elif r.status_code == 503 and "loading" not in r.text:  # the model cannot be loaded: say why
                raise RuntimeError(f"the replica on port {p} cannot load its model: {r.text}")
        time.sleep(1)
    if pending:
        raise RuntimeError(f"replicas on ports {sorted(pending)} not ready after {timeout_s:.0f} s")


def start_nginx(config: str, run_dir: Path) -> subprocess.Popen:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        raise RuntimeError("nginx is not installed: apt-get install nginx-light (scripts/install.sh does with REPLICAS)")
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    path = run_dir / "nginx.conf"
    path.write_text(config)
    subprocess.run([nginx, "-t", "-q", "-c", str(path), "-p", str(run_dir)], check=True)
    return subprocess.Popen([nginx, "-c", str(path), "-p", str(run_dir), "-g", "daemon off;"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", type=int, default=int(os.environ.get("REPLICAS", 2)))
    ap.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)))
    ap.add_argument("--studies", default=os.environ.get("STUDIES", "sample-data/studies"))
    ap.add_argument("--run-dir", type=Path, default=None, help="nginx's files and the replicas' logs")
    ap.add_argument("--fail-timeout", type=int, default=10,
                    help="seconds nginx leaves a failed replica out before trying it again")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: arguments for every start_server")
    args = ap.parse_args(argv)
    extra = [a for a in args.extra if a != "--"]
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="medsam2-replicas-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    ports = [args.port + k for k in range(1, args.replicas + 1)]
    procs = start_replicas(args.replicas, args.host, args.port, args.studies, extra, run_dir)
    # who is where, for an operator (and the tests) to stop or restart one replica by hand
    (run_dir / "replicas.json").write_text(json.dumps(
        [{"name": f"r{k}", "port": p, "pid": proc.pid, "cmd": proc.args} for k, (p, proc) in
         enumerate(zip(ports, procs), start=1)], indent=2))
    nginx = None

    def stop(*_, code: int = 0):
        if nginx is not None and nginx.poll() is None:
            nginx.terminate()
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in ([nginx] if nginx else []) + procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        sys.exit(code)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        wait_ready(ports, procs)
        nginx = start_nginx(nginx_config(args.host, args.port, ports, run_dir, args.fail_timeout), run_dir)
    except Exception as e:  # noqa: BLE001
        print(f"error: {e}", file=sys.stderr)
        stop(code=1)
    print(f"{args.replicas} replicas behind nginx on http://{args.host}:{args.port} (logs and nginx.conf in {run_dir})",
          flush=True)
    nginx.wait()
    stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
