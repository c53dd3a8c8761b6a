#!/usr/bin/env bash
# The README demo: real WebAssembly policies deciding about real certificates.
# Run through `make demo`, which builds the plugins and rotor first.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR=${DATA_DIR:-rotor-data}
ROTOR=${ROTOR:-target/release/rotor}
demo="$DATA_DIR/demo"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "generate demo inputs in $demo (a CA, two leaves, a kubelet CSR)"
cargo run --quiet --release -p rotor --example demo_certs -- "$demo"

step "rotor policy check: load the default bundle's plugins and validate their settings"
"$ROTOR" policy check

step "renewal hook: a certificate expiring in 30 days"
"$ROTOR" policy eval --hook renewal --input "$demo/expires-in-30-days.crt"

step "renewal hook: a certificate expiring in 300 days"
"$ROTOR" policy eval --hook renewal --input "$demo/expires-in-300-days.crt"

step "renewal hook, strict bundle (renew at 2/3 of the lifetime, jittered by serial)"
"$ROTOR" --bundle policies/strict policy eval --hook renewal --input "$demo/expires-in-300-days.crt"

step "SAN hook: the kubelet CSR checked against its own node (allowed)"
"$ROTOR" policy eval --hook san --input "$demo/demo-node.csr" --profile kubelet-serving \
  --node-name demo-node --node-ip 10.0.0.5

step "SAN hook: the same CSR presented for another node (denied, every reason)"
"$ROTOR" policy eval --hook san --input "$demo/demo-node.csr" --profile kubelet-serving \
  --node-name other-node --node-ip 10.0.0.9

step "CSR hook: the kubelet serving CSR from its own node"
"$ROTOR" policy eval --hook csr --input "$demo/demo-node.csr" \
  --signer kubernetes.io/kubelet-serving --username system:node:demo-node \
  --group system:nodes --usage 'digital signature' --usage 'server auth'

step "the shipped fixtures of both bundles"
"$ROTOR" --bundle policies/default policy test policies/default/fixtures | tail -1
"$ROTOR" --bundle policies/strict policy test policies/strict/fixtures | tail -1
