#!/usr/bin/env bash
# Instructions each proxied request costs the gateway thread, counted by callgrind, for the bare
# hyper proxy and Tandem side by side. Time on a small shared machine moves by half between runs;
# an instruction count does not, so a change to the request path can be judged by it. The count is
# the marginal one: two runs of `tandem bench overhead` at a low rate that differ only in length,
# so start-up and warm-up cancel out.
#
# usage: benches/instructions.sh [path to a release `tandem`]   (needs valgrind)
set -euo pipefail

bin=${1:-target/release/tandem}
rate=100
short=3
long=9
command -v valgrind > /dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
[ -x "$bin" ] || { echo "no tandem binary at $bin (cargo build --release)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Instructions of the gateway thread in a run of `seconds` through `proxy`. The gateway thread is
# the one that both serves HTTP and calls upstream; the mock upstream only serves, and the load
# generator only calls.
gateway_instructions() {
    local proxy=$1 seconds=$2 out="$work/$1-$2"
    if ! valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$out.%p" \
        "$bin" bench overhead --rates "$rate" --seconds "$seconds" --rounds 1 --warmup 0.5 \
        --probe-seconds 0 --proxies "$proxy" > "$out.log" 2>&1; then
        echo "the $proxy run failed:" >&2
        cat "$out.log" >&2
        exit 1
    fi
    # Failed requests are listed as "N × cause"; the count per request assumes none.
    if grep -q ' × ' "$out.log"; then
        echo "the $proxy run had failed requests:" >&2
        cat "$out.log" >&2
        exit 1
    fi
    local file
    for file in "$out".*-*; do
        if grep -q 'role::Server' "$file" && grep -q 'role::Client' "$file"; then
            awk '/^totals:/ {print $2}' "$file"
            return
        fi
    done
    echo "no thread both served and called upstream in the $proxy run; a build that inlines hyper's" \
        "role::Server and role::Client functions away cannot be counted this way" >&2
    exit 1
}

printf '%-8s %28s\n' proxy 'instructions per request'
declare -A per_request
for proxy in bare tandem; do
    # A failure inside a command substitution does not stop the script by itself.
    first=$(gateway_instructions "$proxy" "$short") || exit 1
    second=$(gateway_instructions "$proxy" "$long") || exit 1
    per_request[$proxy]=$(( (second - first) / (rate * (long - short)) ))
    printf '%-8s %28d\n' "$proxy" "${per_request[$proxy]}"
done
awk -v t="${per_request[tandem]}" -v b="${per_request[bare]}" \
    'BEGIN { printf "tandem / bare: %.2f\n", t / b }'
