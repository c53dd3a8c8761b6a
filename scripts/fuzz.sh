#!/usr/bin/env bash
# Fuzz every target of fuzz/ for $1 seconds (default 180), one after the other, then merge what
# each found into a minimized committed corpus (fuzz/corpus/<target>/). Needs rustup's nightly
# toolchain (cargo-fuzz builds with coverage instrumentation); installs cargo-fuzz if missing.
# Overflow checks are on (-a): an arithmetic overflow is a finding, as a panic is.
set -euo pipefail
seconds="${1:-180}"
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo +nightly fuzz build -s none -a
targets=$(cargo +nightly fuzz list)
for t in $targets; do
    work="$(mktemp -d)"
    echo "== $t: ${seconds}s"
    # Grow a scratch corpus seeded from the committed one; stop at the first crash.
    cargo +nightly fuzz run -s none -a "$t" "$work" "corpus/$t" -- \
        -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
        -print_final_stats=1 2>&1 | grep -E '^(#[0-9]+.*DONE|stat::|==|SUMMARY|.*panicked)' || true
    # Keep a smallest set of inputs covering every edge reached (not every hit count): the
    # committed corpus stays small. Replace the corpus only when the merge produced one.
    min="$(mktemp -d)"
    cargo +nightly fuzz run -s none -a "$t" "$min" "corpus/$t" "$work" -- \
        -set_cover_merge=1 -use_counters=0 >/dev/null 2>&1 || true
    if [ -n "$(ls -A "$min")" ]; then
        rm -rf "corpus/$t"
        mv "$min" "corpus/$t"
    else
        echo "   merge produced nothing: corpus/$t left as it was"
        rm -rf "$min"
    fi
    rm -rf "$work"
    echo "   corpus: $(ls "corpus/$t" | wc -l) inputs"
done
crashes="$(find artifacts -type f 2>/dev/null)"
if [ -n "$crashes" ]; then
    echo "$crashes" | sed 's/^/crash: /'
    exit 1
fi
echo "no crashes"
