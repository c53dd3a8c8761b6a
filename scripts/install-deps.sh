#!/usr/bin/env bash
# System tools, installed when missing (Debian packages by apt-get, as root).
#
#   install-deps.sh build   what building rotor needs: protoc (protobuf-compiler) and the
#                           well-known types it imports (libprotobuf-dev), for the etcd
#                           client's gRPC code (make build, lint, demo run this first)
#   install-deps.sh         that, and what the tests use (make test runs this first):
#     openssl, and Python's cryptography package: independent checkers of what rotor writes;
#     flock and mount (util-linux), chattr (e2fsprogs): the lock, full-disk and immutable-file
#     cases of tests/it/state.rs;
#     etcd and etcdctl (etcd-server, etcd-client): the real etcd of tests/it/etcd.rs;
#     docker-registry (the CNCF distribution registry): the OCI registry of tests/it/distribution.rs;
#     Python's prometheus_client: an independent parser of `rotor serve`'s metrics page;
#     Python's kubernetes client: loads the kubeconfigs `rotor agent` writes (tests/it/agent.rs).
# The Python packages go to the python3 on the PATH.
set -euo pipefail

need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
# A recommendation of protobuf-compiler, which --no-install-recommends leaves out: without it
# protoc cannot find google/protobuf/descriptor.proto and the etcd client does not build.
[ -e /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
if [ "${1:-all}" != build ]; then
  command -v openssl >/dev/null || need+=(openssl)
  command -v flock >/dev/null || need+=(util-linux)
  command -v script >/dev/null || need+=(bsdutils)
  command -v curl >/dev/null || need+=(curl)
  command -v mount >/dev/null || need+=(mount)
  command -v chattr >/dev/null || need+=(e2fsprogs)
  command -v python3 >/dev/null || need+=(python3 python3-pip)
  command -v etcd >/dev/null || need+=(etcd-server)
  command -v etcdctl >/dev/null || need+=(etcd-client)
  command -v docker-registry >/dev/null || need+=(docker-registry)
fi

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing ${need[*]}; run as root, or: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
  echo "install-deps: apt-get install ${need[*]}"
  apt-get update -qq
  # The etcd-server package must not start a system etcd: the tests start their own.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if [ "${1:-all}" != build ] && ! python3 -c 'import cryptography' 2>/dev/null; then
  echo "install-deps: pip install cryptography (for $(command -v python3))"
  python3 -m pip install --quiet cryptography 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages cryptography
fi

if [ "${1:-all}" != build ] && ! python3 -c 'import prometheus_client.openmetrics.parser' 2>/dev/null; then
  echo "install-deps: pip install prometheus-client (for $(command -v python3))"
  python3 -m pip install --quiet prometheus-client 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages prometheus-client
fi

if [ "${1:-all}" != build ] && ! python3 -c 'import kubernetes, yaml' 2>/dev/null; then
  echo "install-deps: pip install kubernetes (for $(command -v python3))"
  python3 -m pip install --quiet kubernetes 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages kubernetes
fi
