#!/usr/bin/env bash
# Runs each structured fuzz property for a bounded time with many cases: the request decoders
# (cloud-adapters/tests/fuzz_requests.rs), the SSE parser and stream decoders
# (cloud-adapters/tests/fuzz_streams.rs) and the config parser (gateway/tests/fuzz_config.rs).
# Each property runs in batches of BATCH cases (a fresh random seed per batch) until its time is
# up, and the cases run are counted. A failure prints proptest's minimal input and the script
# exits 1 at the end: make that input a named test beside the property (`found_...`) and fix the
# parser.
#
# usage: benches/fuzz.sh [SECONDS_PER_PROPERTY]   (default 60; BATCH=2000 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:-60}
batch=${BATCH:-2000}

# Builds a test binary once and prints its path.
binary() {
    cargo test --locked -p "$1" --test "$2" --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$2"
}

requests=$(binary tandem-cloud-adapters fuzz_requests)
streams=$(binary tandem-cloud-adapters fuzz_streams)
config=$(binary tandem-gateway fuzz_config)

failed=0
run() {
    local bin=$1 name=$2 cases=0 runs=0 start=$SECONDS left log
    log=$(mktemp)
    while (( SECONDS - start < budget )); do
        left=$(( budget - (SECONDS - start) ))
        if PROPTEST_CASES=$batch RUST_BACKTRACE=0 timeout "$(( left + 30 ))" \
            "$bin" --exact "$name" --test-threads 1 >"$log" 2>&1; then
            cases=$(( cases + batch ))
            runs=$(( runs + 1 ))
        else
            echo "FAIL $name after $cases cases:"
            grep -E "minimal failing input|panicked at|Test failed" "$log" | head -20 || tail -40 "$log"
            failed=1
            break
        fi
    done
    rm -f "$log"
    printf '%-72s %9d cases in %4ds\n' "$name" "$cases" "$(( SECONDS - start ))"
}

for p in openai_chat_requests openai_chat_requests_valid_json anthropic_messages_requests \
    anthropic_messages_requests_valid_json openai_completion_requests \
    openai_completion_requests_valid_json any_json_to_every_decoder; do
    run "$requests" "$p"
done
for p in sse_parser_gives_the_same_events_however_the_bytes_are_split \
    sse_parser_round_trips_what_the_encoder_writes openai_chunk_decoder anthropic_event_decoder; do
    run "$streams" "$p"
done
for p in any_text structured_toml; do
    run "$config" "$p"
done
exit $failed
