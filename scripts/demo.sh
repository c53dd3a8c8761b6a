#!/usr/bin/env bash
# The README demo: a k3s-layout cluster PKI in ./rotor-data, renewed a year later through the
# WebAssembly renewal policy; a kubeadm layout beside it; the policy plugins on their own.
# Run through `make demo`, which builds the plugins and rotor first. Safe to run again: an
# initialized data dir is reused, never overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR=${DATA_DIR:-rotor-data}
ROTOR=${ROTOR:-target/release/rotor}
demo="$DATA_DIR/demo-inputs"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
later() { date -u -d "+$1 days" +%Y-%m-%dT%H:%M:%SZ; }

step "rotor policy check: load the default bundle's plugins and validate their settings"
"$ROTOR" policy check

step "rotor init: the k3s PKI in $DATA_DIR (5 CAs, every leaf, service.key, token, encrypted datastore)"
if [ -f "$DATA_DIR/rotor.json" ]; then
  echo "$DATA_DIR is already initialized: reusing it (rotor init refuses to touch it)"
else
  "$ROTOR" --data-dir "$DATA_DIR" init --profile k3s --node-name demo-server \
    --node-ip 10.0.0.5 --tls-san demo.example.com
fi

step "rotor certificate check -o table"
"$ROTOR" --data-dir "$DATA_DIR" certificate check -o table || true

if command -v openssl >/dev/null; then
  step "openssl verify, independently of rotor"
  openssl verify -CAfile "$DATA_DIR/server/tls/server-ca.crt" "$DATA_DIR/server/tls/serving-kube-apiserver.crt"
  openssl verify -CAfile "$DATA_DIR/server/tls/client-ca.crt" "$DATA_DIR/server/tls/client-admin.crt"
fi

step "rotor start --dry-run, 300 days from now: the renewal policy's plan, nothing changed"
"$ROTOR" --data-dir "$DATA_DIR" start --dry-run --now "$(later 300)" | grep -v '^  keep' || true

step "rotor start, 300 days from now: backup, then renewal with new keys"
"$ROTOR" --data-dir "$DATA_DIR" start --now "$(later 300)" | grep -v '^  keep' || true

step "rotor certificate check, 300 days from now: every leaf OK again"
"$ROTOR" --data-dir "$DATA_DIR" certificate check --now "$(later 300)" -o table | head -12 || true

step "CA rotation: rotate-default-ca stages new roots cross-signed by the current ones"
cp "$DATA_DIR/server/tls/server-ca.crt" "$DATA_DIR/old-server-ca.crt"
staged="$DATA_DIR/rotate-ca-$(date +%s)"
"$ROTOR" --data-dir "$DATA_DIR" certificate rotate-default-ca --out "$staged"

step "rotate-ca without --force: refused (the root changes), nothing changed"
"$ROTOR" --data-dir "$DATA_DIR" certificate rotate-ca --path "$staged" || true

step "rotate-ca --force: the datastore's CA material replaced in one step"
"$ROTOR" --data-dir "$DATA_DIR" certificate rotate-ca --path "$staged" --force

step "rotor start: every leaf re-issued under the new CAs"
"$ROTOR" --data-dir "$DATA_DIR" start | grep -v '^  renew' || true

if command -v openssl >/dev/null; then
  step "old-trust clients still verify the new apiserver certificate (through the cross-signed root)"
  openssl verify -CAfile "$DATA_DIR/old-server-ca.crt" -untrusted "$DATA_DIR/server/tls/server-ca.crt" \
    "$DATA_DIR/server/tls/serving-kube-apiserver.crt"
fi

step "state safety: a token rotation killed after the datastore took it; the next command finishes it"
before=$(cat "$DATA_DIR/server/token")
ROTOR_FAILPOINT=commit:datastore "$ROTOR" --data-dir "$DATA_DIR" token rotate \
  --new-token "demo-$(date +%s%N)" > /dev/null 2>&1 || echo "(killed in the middle of the change)"
"$ROTOR" --data-dir "$DATA_DIR" certificate check > /dev/null || true
[ "$(cat "$DATA_DIR/server/token")" != "$before" ] && echo "token file and datastore record changed together"
echo "generations (the live one and its backups): $(ls "$DATA_DIR/.rotor/generations" | tr '\n' ' ')"

step "kubeadm layout in $DATA_DIR/kubeadm: rotor init --profile kubeadm, certs check-expiration"
if [ ! -f "$DATA_DIR/kubeadm/rotor.json" ]; then
  "$ROTOR" --data-dir "$DATA_DIR/kubeadm" init --profile kubeadm --node-name cp-1 --node-ip 10.0.0.10
fi
"$ROTOR" --data-dir "$DATA_DIR/kubeadm" certs check-expiration

step "policy plugins on their own: demo inputs in $demo (a CA, two leaves, a kubelet CSR)"
cargo run --quiet --release -p rotor --example demo_certs -- "$demo"

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

step "rotor csr sign: the kubelet serving CSR approved by both plugins and signed by the server CA"
"$ROTOR" --data-dir "$DATA_DIR" csr sign --csr "$demo/demo-node.csr" \
  --signer kubernetes.io/kubelet-serving --username system:node:demo-node --group system:nodes \
  --usage 'digital signature' --usage 'server auth' --node-ip 10.0.0.5 --out "$demo/demo-node.crt"
if command -v openssl >/dev/null; then
  openssl verify -CAfile "$DATA_DIR/server/tls/server-ca.crt" "$demo/demo-node.crt"
fi

step "rotor csr review: the same CSR sent by another node (denied, every reason, exit 1)"
"$ROTOR" --data-dir "$DATA_DIR" csr review --csr "$demo/demo-node.csr" \
  --signer kubernetes.io/kubelet-serving --username system:node:other-node --group system:nodes \
  --usage 'digital signature' --usage 'server auth' --node-ip 10.0.0.9 || echo "(exit $?)"

step "rotor csr sign, batch: 10,000 kubelet serving CSR objects (every 50th claims another node's IP)"
cargo run --quiet --release -p rotor --example gen_csrs -- 10000 "$DATA_DIR/csr-batch"
"$ROTOR" --data-dir "$DATA_DIR" csr sign --jsonl "$DATA_DIR/csr-batch/csrs.jsonl" \
  --node-evidence "$DATA_DIR/csr-batch/nodes.json" > "$DATA_DIR/csr-batch/results.jsonl"
echo "one result per CSR in $DATA_DIR/csr-batch/results.jsonl, e.g. a denial:"
grep -m1 '"deny"' "$DATA_DIR/csr-batch/results.jsonl"

step "the shipped fixtures of both bundles"
"$ROTOR" --bundle policies/default policy test policies/default/fixtures | tail -1
"$ROTOR" --bundle policies/strict policy test policies/strict/fixtures | tail -1
