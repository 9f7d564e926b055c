#!/usr/bin/env bash
# The one test command (README, .ci/run). Installs what the tests need on a
# fresh machine, then runs formatting, lints and every test.
#
# Installs, when missing, into $AGENTAUDIT_TOOLS (default ~/.cache/agentaudit-tools):
#   - tansu (Kafka-compatible broker, a separate process for end-to-end tests):
#       cargo install --locked tansu --features dynostore
#   - a Python venv with kafka-python (a Kafka client that is not ours),
#     duckdb (reads the dataset with Hive partitioning), moto's server (an
#     S3 API on loopback, for the lake on object storage) and pyarrow (its
#     S3 filesystem feeds DuckDB the lake: DuckDB's httpfs extension is a
#     download from DuckDB's own site, not a registry), and the OpenTelemetry
#     Python SDK with its OTLP encoder (a span producer that is not ours),
#     from PyPI.
# and, system-wide from Debian when missing (apt-get update; apt-get install):
#   - prometheus and prometheus-alertmanager (promtool ships with prometheus),
#     for the rule checks and the end-to-end alerting test.
set -euo pipefail
cd "$(dirname "$0")/.."

# The debug test binaries and their dependencies take several GB; say how
# much room there is, so that a link failing on a full disk is plain.
echo "test.sh: free space: $(df -h --output=avail . | tail -1 | tr -d ' ') here"

TOOLS="${AGENTAUDIT_TOOLS:-$HOME/.cache/agentaudit-tools}"
mkdir -p "$TOOLS"

if [ ! -x "$TOOLS/bin/tansu" ]; then
  echo "test.sh: installing tansu into $TOOLS (cargo install --locked tansu --features dynostore)…"
  cargo install --locked tansu --features dynostore --root "$TOOLS"
fi
export TANSU_BIN="$TOOLS/bin/tansu"

VENV="$TOOLS/venv"
if ! "$VENV/bin/python" -c 'import kafka, duckdb' 2>/dev/null; then
  echo "test.sh: installing kafka-python and duckdb into $VENV (pip)…"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check kafka-python duckdb
fi
if [ ! -x "$VENV/bin/moto_server" ]; then
  echo "test.sh: installing moto's S3 server into $VENV (pip install 'moto[server]')…"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server]'
fi
if ! "$VENV/bin/python" -c 'import pyarrow.fs' 2>/dev/null; then
  echo "test.sh: installing pyarrow into $VENV (pip)…"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check pyarrow
fi
if ! "$VENV/bin/python" -c 'import opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.common.trace_encoder' 2>/dev/null; then
  echo "test.sh: installing the OpenTelemetry Python SDK and its OTLP encoder into $VENV (pip)…"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check opentelemetry-sdk opentelemetry-exporter-otlp-proto-common
fi
export MOTO_SERVER_BIN="$VENV/bin/moto_server"
export AGENTAUDIT_PYTHON="$VENV/bin/python"

if ! command -v promtool >/dev/null || ! command -v prometheus-alertmanager >/dev/null; then
  echo "test.sh: installing Debian's prometheus and prometheus-alertmanager (apt-get)…"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y prometheus prometheus-alertmanager
fi

echo "test.sh: promtool check rules / test rules"
promtool check rules dashboards/prometheus/agentaudit.rules.yml
promtool test rules dashboards/prometheus/agentaudit.rules.test.yml

echo "test.sh: cargo fmt --check"
cargo fmt --all -- --check
echo "test.sh: cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "test.sh: cargo test --benches (each benchmark once, as a smoke test)"
cargo test --benches
echo "test.sh: cargo test"
cargo test
