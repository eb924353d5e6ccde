#!/usr/bin/env bash
# The README's picture of TensorBoard's scalars page for a sweep's eval curves.
#
#   scripts/tensorboard_screenshot.sh [SWEEP_OUTPUT] [OUT_PNG] [PORT]
#
# Pushes a copy of SWEEP_OUTPUT (default runs/demo/sweep, what `make demo` writes) into fresh
# TensorBoard event files with `e2lm-vllm log` (the copy, so the sweep's own trackers.json is left
# alone), serves them on 127.0.0.1 only, and screenshots the scalars page with headless Chromium
# (Debian: `apt-get install -y chromium`). Everything it starts is stopped on exit.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
SWEEP="$(realpath "${1:-$REPO/runs/demo/sweep}")"
OUT="$(realpath -m "${2:-$REPO/docs/img/tensorboard_scalars.png}")"
PORT="${3:-6123}"
PY="$REPO/.venv/bin/python"
CHROMIUM="$(command -v chromium || command -v chromium-browser || true)"
[ -f "$SWEEP/metrics.parquet" ] || { echo "no metrics.parquet in $SWEEP: run make demo first, or pass a sweep's output folder" >&2; exit 2; }
[ -n "$CHROMIUM" ] || { echo "chromium not found: apt-get install -y chromium" >&2; exit 2; }

WORK="$(mktemp -d)"
TB_PID=""
cleanup() { [ -n "$TB_PID" ] && kill "$TB_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

mkdir -p "$WORK/sweep"
cp "$SWEEP"/metrics.parquet "$WORK/sweep/"
[ -f "$SWEEP/samples.parquet" ] && cp "$SWEEP/samples.parquet" "$WORK/sweep/"
[ -f "$SWEEP/failures.parquet" ] && cp "$SWEEP/failures.parquet" "$WORK/sweep/"
PYTHONPATH="$REPO" "$PY" -m e2lm_vllm.cli log "$WORK/sweep" --log-to "tensorboard:$WORK/tb"

"$PY" -m tensorboard.main --logdir "$WORK/tb" --host 127.0.0.1 --port "$PORT" >"$WORK/tensorboard.log" 2>&1 &
TB_PID=$!
for _ in $(seq 60); do
    curl -sf "http://127.0.0.1:$PORT/data/runs" >/dev/null 2>&1 && break
    sleep 1
done
curl -sf "http://127.0.0.1:$PORT/data/runs" >/dev/null || { cat "$WORK/tensorboard.log" >&2; exit 1; }

mkdir -p "$(dirname "$OUT")"
# The scalars dashboard, filtered to the eval curves against training steps.
"$CHROMIUM" --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1500,1100 \
    --virtual-time-budget=20000 --screenshot="$OUT" \
    "http://127.0.0.1:$PORT/?darkMode=false#scalars&tagFilter=%5Eeval%2F" >/dev/null 2>&1
echo "wrote $OUT"
