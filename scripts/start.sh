#!/usr/bin/env bash
# Install everything, write the bundled sample study, and start the MONAI Label server on it.
#   bash scripts/start.sh                      # SAM 2.1 Hiera-Tiny (downloaded into model/ on first run);
#                                              # offline, on the bundled sample: the demo model instead
#   CHECKPOINT=medsam2 bash scripts/start.sh   # any name in model/manifest.json, or a .pt path
#   CHECKPOINT=demo bash scripts/start.sh      # offline: the small demo model shipped in model/demo/
#   STUDIES=/data/ct bash scripts/start.sh     # your own folder (or a DICOMweb URL) instead of the sample
#   REPLICAS=2 bash scripts/start.sh           # 2 servers behind nginx on PORT, routed by image (docs/deployment.md)
# Extra arguments go to `monailabel start_server` (e.g. --conf memory_policy fifo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
source .venv/bin/activate
STUDIES=${STUDIES:-sample-data/studies}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
if [ "$STUDIES" = sample-data/studies ]; then
  python -m medsam2 sample "$STUDIES"
fi
if [ -n "${CHECKPOINT:-}" ]; then
  python -m medsam2 fetch "$CHECKPOINT" || {
    echo "The server starts anyway; inference will answer with the message above until the checkpoint is in place."
    [ "$CHECKPOINT" = demo ] || echo "Offline? Try: CHECKPOINT=demo bash scripts/start.sh"
  }
else
  CHECKPOINT=sam2.1_hiera_tiny
  if ! python -m medsam2 fetch "$CHECKPOINT"; then
    if [ "$STUDIES" = sample-data/studies ]; then
      # the bundled sample is phantoms, which the shipped demo model knows: the first click works offline
      echo "SAM 2.1 Hiera-Tiny is not available (above): serving the bundled sample with the demo model" \
           "(model/demo/, trained on phantoms only). Set CHECKPOINT to choose another model."
      CHECKPOINT=demo
      python -m medsam2 fetch demo
    else
      echo "The server starts anyway; inference will answer with the message above until the checkpoint is in place."
    fi
  fi
fi
if [ "${REPLICAS:-1}" -gt 1 ]; then
  if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    # Debian's nginx, without starting the package's own service (port 80 on every interface)
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  fi
  exec python scripts/replicas.py --replicas "$REPLICAS" --host "$HOST" --port "$PORT" --studies "$STUDIES" -- \
    --conf checkpoint "$CHECKPOINT" "$@"
fi
exec monailabel start_server --app apps/medsam2 --studies "$STUDIES" --host "$HOST" --port "$PORT" \
  --conf checkpoint "$CHECKPOINT" "$@"
