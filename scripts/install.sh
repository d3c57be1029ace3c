#!/usr/bin/env bash
# Install everything into .venv from the project's own files (requirements.txt, pyproject.toml).
# Idempotent: re-running only installs what is missing. Python 3.11 on x86_64 Linux.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# pip's output, without the notices about package folders this machine's pip configuration names
pip_install() {
  local log
  log=$(mktemp)
  if ! .venv/bin/pip install --disable-pip-version-check -q "$@" >"$log" 2>&1; then
    cat "$log"; rm -f "$log"; return 1
  fi
  grep -v "is neither a file nor a directory" "$log" || true
  rm -f "$log"
}
stamp=.venv/.installed-$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  # sam2 is a source distribution: build it without its optional CUDA extension.
  export SAM2_BUILD_CUDA=0
  pip_install -r requirements.txt
  pip_install --no-deps -e .
  rm -f .venv/.installed-*
  touch "$stamp"
fi
echo "installed: $(.venv/bin/python -c 'import torch, sam2, monailabel; print("torch", torch.__version__, "| monailabel", monailabel.__version__)')"
