#!/usr/bin/env bash
# Where the time goes (docs/performance.md, "Where the time goes"): perf samples
#   1. one fresh renewal decision, repeated for 5 s (the policy bench's
#      renewal_decision/fresh_sandbox/pooling+epoch, criterion's --profile-time), and
#   2. `rotor csr sign --jsonl` on 10,000 kubelet-serving CSRs (host/examples/gen_csrs.rs),
# and prints each one's CPU samples by part of the work (scripts/profile-breakdown.py):
# guest code, crypto, instantiate/teardown, lift/lower, settings, parsing, building, output,
# kernel, malloc. Needs `perf` (Debian: linux-perf) and kernel.perf_event_paranoid <= 2, and
# the plugins (`make plugins`). Usage: scripts/profile.sh [OUT_DIR] (default target/profile).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/profile}
mkdir -p "$out"
if ! command -v perf >/dev/null; then
    echo "perf is not installed (Debian: apt-get install linux-perf)" >&2
    exit 2
fi
breakdown() { perf report -i "$1" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
    | python3 scripts/profile-breakdown.py "$2"; }

# 1. One fresh decision, over and over.
bench=$(cargo bench -p rotor --bench policy --no-run 2>&1 \
    | sed -n 's/.*Executable .*benches\/policy.rs (\(.*\))/\1/p' | tail -1)
[ -x "$bench" ] || { echo "could not build the policy bench" >&2; exit 2; }
# The bench compiles plugins in memory before and after it measures: attach to it for 5 s in
# the middle of its 20 s of decisions, so only those are sampled.
"$bench" --bench --profile-time 20 'renewal_decision/fresh_sandbox/pooling\+epoch$' >/dev/null &
pid=$!
sleep 10
perf record -q -F 1999 -g -p "$pid" -o "$out/decision.data" -- sleep 5
kill "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
breakdown "$out/decision.data" "one fresh renewal decision (policy bench, 5 s of decisions)"

# 2. 10,000 CSRs through the whole process.
cargo build --release -q -p rotor --bin rotor
cargo run --release -q -p rotor --example gen_csrs -- 10000 "$out/csrs" >/dev/null
rm -rf "$out/data-dir"
target/release/rotor --data-dir "$out/data-dir" init --node-name profile --node-ip 127.0.0.1 >/dev/null
perf record -q -F 1999 -g -o "$out/csr.data" -- target/release/rotor --data-dir "$out/data-dir" \
    csr sign --jsonl "$out/csrs/csrs.jsonl" --node-evidence "$out/csrs/nodes.json" >/dev/null
breakdown "$out/csr.data" "10,000 kubelet CSRs, rotor csr sign --jsonl (whole process)"
echo "(perf data in $out: perf report -i $out/decision.data)"
