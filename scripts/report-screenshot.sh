#!/usr/bin/env bash
# Renders docs/incident-report.png, the picture in README's "When an alert
# fires": demo traffic with a planted injection spike goes through `serve`,
# `agentaudit incident` writes the report of the spike's alert, and Debian's
# headless Chromium (installed with apt-get when missing) screenshots it.
#
# Uses target/release/agentaudit (AGENTAUDIT_BIN overrides); build it first.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${AGENTAUDIT_BIN:-target/release/agentaudit}"
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release first" >&2; exit 1; }
if ! command -v chromium >/dev/null; then
  echo "report-screenshot.sh: installing Debian's chromium (apt-get)…"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium
fi

WORK="$(mktemp -d)"
trap 'kill "${SERVE:-0}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$BIN" serve --demo --demo-rate 2000 --scenario injection_spike \
  --data-dir "$WORK/data" --listen 127.0.0.1:0 >"$WORK/serve.log" 2>&1 &
SERVE=$!

SQL="SELECT alert_id FROM alerts WHERE rule = 'tool_frequency_spike' AND tool = 'export_csv' ORDER BY window_start LIMIT 1"
ID=""
for _ in $(seq 1 90); do
  sleep 2
  ID="$("$BIN" query --data-dir "$WORK/data" --format csv "$SQL" 2>/dev/null | sed -n 2p || true)"
  [ -n "$ID" ] && break
done
[ -n "$ID" ] || { echo "no spike alert was stored; serve's log:" >&2; tail -20 "$WORK/serve.log" >&2; exit 1; }
sleep 5
kill -TERM "$SERVE"; wait "$SERVE" || true; SERVE=""

"$BIN" incident "$ID" --data-dir "$WORK/data" --out-dir "$WORK" >/dev/null
HTML="$(ls "$WORK"/incident-*.html)"
mkdir -p docs
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$WORK/chrome" --hide-scrollbars --window-size=1200,1500 \
  --screenshot="$PWD/docs/incident-report.png" "file://$HTML" 2>/dev/null
echo "docs/incident-report.png: the report of alert $ID"
