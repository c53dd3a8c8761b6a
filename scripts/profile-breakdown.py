#!/usr/bin/env python3
"""Reads `perf report --no-children --sort dso,symbol --stdio -g none` on standard input and
prints where the samples went, by part of the work (scripts/profile.sh runs it)."""

import re
import sys

# First match wins: the order matters (a wasmtime realloc is the component ABI, not libc).
# Compiling a plugin is set-up (once per engine, cached on disk for the CLI), not per decision:
# its samples are counted apart and left out of the shares.
SETUP = re.compile(r"regalloc2|cranelift|wasmparser|wasmtime_environ|wasmtime_internal_cranelift|winch")

PARTS = [
    ("guest code (the plugin, compiled wasm; [JIT] when compiled in memory)",
     lambda dso, sym: dso.endswith(".cwasm") or dso.startswith("[JIT]")),
    ("crypto (aws-lc: P-256 keygen/sign/verify, SHA-256)",
     lambda dso, sym: re.search(r"aws_lc|nistz256|bignum|beeu|\bbn_|sha256|sha2::|ecdsa|p256", sym)),
    ("lift/lower (component model ABI: strings, lists, records)",
     lambda dso, sym: re.search(r"component::func|LowerContext|LiftContext|::lift|::lower|options_memory|typed::", sym)),
    ("instantiate and tear down (Store, instance, pooling slots, memory reset)",
     lambda dso, sym: re.search(r"wasmtime|Sandbox::new|pooling|InstancePre|cranelift", sym)),
    ("settings snapshot / configure",
     lambda dso, sym: re.search(r"settings|snapshot|configure", sym, re.I) and "rotor" in sym),
    ("parsing input (X.509, ASN.1, PEM, JSON in)",
     lambda dso, sym: re.search(r"x509_parser|asn1_rs|der_parser|pem::|serde_json::de|base64|nom::", sym)),
    ("building certificates (rcgen, DER writer)", lambda dso, sym: re.search(r"rcgen|yasna", sym)),
    ("output (JSON out, formatting)",
     lambda dso, sym: re.search(r"serde_json::ser|core::fmt|format_escaped|io::Write|write_str", sym)),
    ("kernel (page faults, page clearing, madvise, pagemap scan)", lambda dso, sym: dso == "[kernel.kallsyms]"),
    ("malloc/free and libc copies",
     lambda dso, sym: dso.startswith("libc") or re.search(r"__rdl_alloc|__rust_alloc|__rust_dealloc", sym)),
]

LINE = re.compile(r"^\s*([0-9.]+)%\s+(\[JIT\] tid \d+|\S+)\s+\[[.k]\]\s+(.*?)\s*(?:-\s+-\s*)?$")


def main():
    title = sys.argv[1] if len(sys.argv) > 1 else "profile"
    totals = {name: 0.0 for name, _ in PARTS}
    other = 0.0
    setup = 0.0
    others = []
    rows = []
    for line in sys.stdin:
        m = LINE.match(line)
        if m:
            rows.append((float(m.group(1)), m.group(2), m.group(3)))
    for share, dso, sym in rows:
        if SETUP.search(sym):
            setup += share
    scale = 100.0 / max(100.0 - setup, 1e-9)
    for share, dso, sym in rows:
        if SETUP.search(sym):
            continue
        share *= scale
        for name, test in PARTS:
            if test(dso, sym):
                totals[name] += share
                break
        else:
            other += share
            others.append((share, sym))
    print(f"{title}: share of CPU samples by part"
          + (f" (leaving out {setup:.1f}% compiling plugins, set-up)" if setup >= 0.05 else ""))
    for name, share in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {share:6.2f}%  {name}")
    print(f"  {other:6.2f}%  other; the largest: "
          + ", ".join(f"{s[:60]} {p:.2f}%" for p, s in sorted(others, reverse=True)[:4]))


if __name__ == "__main__":
    main()
