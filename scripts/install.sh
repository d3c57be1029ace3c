#!/usr/bin/env bash
# Install everything into .venv from the project's own files (requirements.txt, pyproject.toml).
# Idempotent: re-running only installs what is missing. Python 3.11 on x86_64 Linux.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  # sam2 is a source distribution: build it without its optional CUDA extension.
  SAM2_BUILD_CUDA=0 .venv/bin/pip install --disable-pip-version-check -q -r requirements.txt
  .venv/bin/pip install --disable-pip-version-check -q --no-deps -e .
  rm -f .venv/.installed-*
  touch "$stamp"
fi
echo "installed: $(.venv/bin/python -c 'import torch, sam2, monailabel; print("torch", torch.__version__, "| monailabel", monailabel.__version__)')"
