#!/usr/bin/env bash
# Cross-builds the kernel tests for aarch64 and runs them under qemu (`-cpu max`: NEON with
# dotprod), so the NEON path is checked against the scalar reference on x86 machines too. When the
# cross toolchain cannot be installed, it says so and skips; a failing test fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }
skip() { log "aarch64 kernel tests skipped: $*"; exit 0; }

if [ "$(uname -m)" = aarch64 ]; then
    skip "this machine is aarch64: the main suite already ran the NEON path natively"
fi
sudo_cmd=""
[ "$(id -u)" = 0 ] || sudo_cmd="sudo"
if ! command -v qemu-aarch64 >/dev/null 2>&1 || ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1; then
    log "installing the aarch64 cross toolchain and qemu-user"
    { $sudo_cmd apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq \
          qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null; } ||
        skip "cannot install qemu-user and gcc-aarch64-linux-gnu"
fi
if ! rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
    rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1 ||
        skip "cannot add the rust target aarch64-unknown-linux-gnu"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu max"
log "kernel tests on aarch64 under qemu"
cargo test --locked -p tandem-kernels --target aarch64-unknown-linux-gnu --tests
