#!/usr/bin/env bash
# Install everything, write the bundled sample study, and start the MONAI Label server on it.
#   bash scripts/start.sh                      # SAM 2.1 Hiera-Tiny (downloaded into model/ on first run)
#   CHECKPOINT=medsam2 bash scripts/start.sh   # any name in model/manifest.json, or a .pt path
#   CHECKPOINT=demo bash scripts/start.sh      # offline: the small demo model shipped in model/demo/
#   STUDIES=/data/ct bash scripts/start.sh     # your own folder (or a DICOMweb URL) instead of the sample
# Extra arguments go to `monailabel start_server` (e.g. --conf memory_policy self_sorting).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
source .venv/bin/activate
CHECKPOINT=${CHECKPOINT:-sam2.1_hiera_tiny}
STUDIES=${STUDIES:-sample-data/studies}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
if [ "$STUDIES" = sample-data/studies ]; then
  python -m medsam2 sample "$STUDIES"
fi
python -m medsam2 fetch "$CHECKPOINT" || {
  echo "The server starts anyway; inference will answer with the message above until the checkpoint is in place."
  [ "$CHECKPOINT" = demo ] || echo "Offline? Try: CHECKPOINT=demo bash scripts/start.sh"
}
exec monailabel start_server --app apps/medsam2 --studies "$STUDIES" --host "$HOST" --port "$PORT" \
  --conf checkpoint "$CHECKPOINT" "$@"
