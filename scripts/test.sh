#!/usr/bin/env bash
# Runs Tandem's whole test suite on a fresh machine: installs Redis, fetches the models and the
# ONNX Runtime library into the cache, starts Redis on loopback, then runs every test (and the
# kernel tests for aarch64 under qemu).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

# Redis: the Debian package, started on loopback for the tests that use the real server.
if ! command -v redis-server >/dev/null 2>&1; then
    log "installing redis-server"
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq redis-server >/dev/null
fi
# Headless Chromium and its WebDriver for the dashboard's browser test (tests/tests/dashboard.rs;
# it skips, saying so, where they are missing).
if ! command -v chromedriver >/dev/null 2>&1; then
    log "installing chromium and chromium-driver"
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium chromium-driver >/dev/null \
        || log "chromium could not be installed: the dashboard's browser test will skip"
fi
redis_dir=$(mktemp -d)
redis_port=$(( 20000 + RANDOM % 20000 ))
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
    --dir "$redis_dir" --daemonize yes --pidfile "$redis_dir/redis.pid" --logfile "$redis_dir/redis.log"
cleanup() {
    # Redis writes its log while it shuts down: wait for it before removing its folder.
    redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
    for _ in $(seq 50); do
        if ! redis-cli -p "$redis_port" ping >/dev/null 2>&1; then break; fi
        sleep 0.1
    done
    rm -rf "$redis_dir" || true
}
trap cleanup EXIT
export TANDEM_TEST_REDIS_URL="redis://127.0.0.1:$redis_port/"
log "redis on 127.0.0.1:$redis_port"

# One build of every test and of the `tandem` binary with the features the tests use, so no
# crate is compiled twice.
if cargo nextest --version >/dev/null 2>&1; then
    run_tests() { cargo nextest run --locked --workspace "$@"; }
else
    run_tests() { cargo test --locked --workspace "$@"; }
fi
# The module graph of every crate stays acyclic.
log "checking for import cycles"
if ! command -v python3 >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3 >/dev/null
fi
python3 scripts/check-cycles.py

# The official `openai` and `anthropic` Python SDKs in a venv, for the tests that read Tandem's
# answers with them (tests/py/ and tests/sdk/, through TANDEM_TEST_PYTHON; they skip without it).
venv=${TANDEM_TEST_VENV:-${CARGO_TARGET_DIR:-target}/py}
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    log "installing python3-venv"
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x "$venv/bin/python" ]; then
    log "creating the test venv in $venv"
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade openai anthropic
TANDEM_TEST_PYTHON="$(cd "$venv" && pwd)/bin/python"
export TANDEM_TEST_PYTHON

log "building tandem and the tests"
run_tests --no-run

# Models and the ONNX Runtime library, through Tandem's own fetcher (sha256-checked, cached).
log "fetching models"
"${CARGO_TARGET_DIR:-target}/debug/tandem" models fetch --all

# The whole suite.
log "running tests"
run_tests --no-fail-fast

# The NEON kernels: cross-built for aarch64 and run under qemu (skipped where that cannot be set up).
scripts/test-aarch64.sh
