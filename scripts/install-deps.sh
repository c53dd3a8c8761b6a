#!/usr/bin/env bash
# The system tools the tests use, installed when missing (make test runs this first):
#   openssl, and Python's cryptography package: independent checkers of what rotor writes;
#   flock and mount (util-linux), chattr (e2fsprogs): the lock, full-disk and immutable-file
#   cases of tests/it/state.rs.
# Debian packages need root (apt-get); the Python package goes to the python3 on the PATH.
set -euo pipefail

need=()
command -v openssl >/dev/null || need+=(openssl)
command -v flock >/dev/null || need+=(util-linux)
command -v mount >/dev/null || need+=(mount)
command -v chattr >/dev/null || need+=(e2fsprogs)
command -v python3 >/dev/null || need+=(python3 python3-pip)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing ${need[*]}; run as root, or: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
  echo "install-deps: apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

if ! python3 -c 'import cryptography' 2>/dev/null; then
  echo "install-deps: pip install cryptography (for $(command -v python3))"
  python3 -m pip install --quiet cryptography 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages cryptography
fi
