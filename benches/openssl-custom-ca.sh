#!/bin/sh
# The baseline for `rotor certificate generate-custom-ca` in benches/commands.rs: the same CA set
# built with the openssl command line, as k3s's generate-custom-ca-certs.sh does it: a root, an
# intermediate under it, the five cluster CAs (ECDSA P-256) under the intermediate, each CA file
# followed by its chain, and a service-account key.
#
#   sh benches/openssl-custom-ca.sh p256|rsa4096 OUTDIR [rsa2048|p256]
#
# p256: root and intermediate ECDSA P-256; rsa4096: root and intermediate RSA-4096. The third
# argument is the service-account key's type (default rsa2048, what k3s generates).
set -eu
alg=$1
out=$2
service=${3:-rsa2048}
mkdir -p "$out"
cd "$out"

newkey() { # file algorithm
  case $2 in
    p256) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null ;;
    rsa4096) openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 -out "$1" 2>/dev/null ;;
    rsa2048) openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null ;;
  esac
}

cat > ca.cnf <<'CNF'
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature, keyEncipherment, keyCertSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
CNF

newkey root-ca.key "$alg"
openssl req -x509 -new -key root-ca.key -sha256 -days 7300 -subj "/CN=k3s-root-ca" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" -out root-ca.pem

newkey intermediate-ca.key "$alg"
openssl req -new -key intermediate-ca.key -subj "/CN=k3s-intermediate-ca" -out intermediate-ca.csr
openssl x509 -req -in intermediate-ca.csr -CA root-ca.pem -CAkey root-ca.key -CAcreateserial \
  -sha256 -days 3650 -extfile ca.cnf -extensions v3_ca -out intermediate-ca.crt 2>/dev/null
cat intermediate-ca.crt root-ca.pem > intermediate-ca.pem

for ca in server-ca client-ca request-header-ca etcd/peer-ca etcd/server-ca; do
  mkdir -p "$(dirname "$ca")"
  newkey "$ca.key" p256
  openssl req -new -key "$ca.key" -subj "/CN=k3s-$(basename "$ca")" -out "$ca.csr"
  openssl x509 -req -in "$ca.csr" -CA intermediate-ca.crt -CAkey intermediate-ca.key \
    -CAcreateserial -sha256 -days 3650 -extfile ca.cnf -extensions v3_ca -out "$ca.only" 2>/dev/null
  cat "$ca.only" intermediate-ca.pem > "$ca.crt"
  rm -f "$ca.csr" "$ca.only"
done

newkey service.key "$service"
rm -f intermediate-ca.csr ca.cnf ./*.srl
