#!/usr/bin/env bash
# The serving binary's size and the gateway's build time, for this tree and a base revision side
# by side: both build `tandem` in release into one target dir (dependencies built once), then the
# gateway crate alone is rebuilt after touching it, as in an edit-compile loop.
#
# usage: benches/build.sh BASE_REV   (e.g. benches/build.sh HEAD~20)
set -euo pipefail
cd "$(dirname "$0")/.."
base_rev=${1:?usage: benches/build.sh BASE_REV}
target=${CARGO_TARGET_DIR:-$PWD/target/build-bench}
base_tree=$(mktemp -d)
trap 'git worktree remove --force "$base_tree" >/dev/null 2>&1 || true; rm -f "$base_tree.stripped"' EXIT
git worktree add -q --detach "$base_tree" "$base_rev"

seconds() {
    local start end
    start=$(date +%s.%N)
    CARGO_TARGET_DIR=$target cargo build --release --locked --bin tandem >/dev/null 2>&1
    end=$(date +%s.%N)
    echo "$end - $start" | bc
}

measure() {
    local name=$1 tree=$2
    (
        cd "$tree"
        local all rebuild size stripped crates
        all=$(seconds)
        size=$(stat -c %s "$target/release/tandem")
        strip -o "$base_tree.stripped" "$target/release/tandem"
        stripped=$(stat -c %s "$base_tree.stripped")
        touch gateway/src/lib.rs
        rebuild=$(seconds)
        crates=$(cargo tree --locked -p tandem-gateway -e normal --prefix none 2>/dev/null |
            sed 's/ (\*)//' | sort -u | wc -l)
        printf '%-8s %12s %12s %16.1f %16.1f %8s\n' "$name" "$size" "$stripped" "$all" "$rebuild" "$crates"
    )
}

printf '%-8s %12s %12s %16s %16s %8s\n' tree "bytes" "stripped" "tandem crates s" "gateway crate s" crates
# The first build of each tree also compiles what its dependency graph does not share with the
# other's; the base goes first so this tree's figures come from a warm target dir.
measure base "$base_tree"
measure this "$PWD"
