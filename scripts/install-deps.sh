#!/usr/bin/env bash
# System tools, installed when missing (Debian packages by apt-get, as root).
#
#   install-deps.sh build   what building rotor needs: protoc (protobuf-compiler) and the
#                           well-known types it imports (libprotobuf-dev), for the etcd
#                           client's gRPC code (make build, lint, demo run this first)
#   install-deps.sh deb     what `make deb` needs besides: cargo-deb (`cargo install
#                           cargo-deb@3.8.0` into $ROTOR_TOOLS_DIR/cargo-deb)
#   install-deps.sh package that, and what the package's tests (tests/it/package.rs) need:
#                           lintian, man-db, systemd-analyze (systemd), debootstrap, and a
#                           minimal Debian bookworm root made by debootstrap once, kept as
#                           $ROTOR_TOOLS_DIR/debian-bookworm-minbase.tar (where the tests install
#                           the package for real with dpkg -i)
#   install-deps.sh bench   everything below, and what the benches need besides: OPA (`go
#                           install github.com/open-policy-agent/opa@v1.22.4` into
#                           $ROTOR_TOOLS_DIR/bin), the peer of benches/peers.rs (make bench
#                           runs this first)
#   install-deps.sh         build, package, and what the tests use (make test runs this first):
#     openssl, and Python's cryptography package: independent checkers of what rotor writes;
#     flock and mount (util-linux), chattr (e2fsprogs): the lock, full-disk and immutable-file
#     cases of tests/it/state.rs;
#     etcd and etcdctl (etcd-server, etcd-client): the real etcd of tests/it/etcd.rs;
#     docker-registry (the CNCF distribution registry): the OCI registry of tests/it/distribution.rs,
#     and htpasswd (apache2-utils) for its logins;
#     Python's prometheus_client: an independent parser of `rotor serve`'s metrics page;
#     Python's kubernetes client: loads the kubeconfigs `rotor agent` writes (tests/it/agent.rs);
#     cosign (`go install github.com/sigstore/cosign/v2/cmd/cosign@v2.6.5` into $ROTOR_TOOLS_DIR/bin):
#     signs plugins as vendors on cosign do (tests/it/cosign.rs);
#     PostgreSQL and MariaDB servers (postgresql, mariadb-server), and the real kine built with
#     `go install github.com/k3s-io/kine@v0.17.5` into $ROTOR_TOOLS_DIR/bin (default
#     ~/.cache/rotor-tools, outside the repo): k3s's datastores of tests/it/kine.rs. The
#     servers are never started here (the tests start their own on loopback);
#     kube-apiserver, kube-controller-manager and kubectl v1.37.2, built from the Go module
#     proxy by scripts/build-control-plane.sh into $ROTOR_TOOLS_DIR/kubernetes-v1.37.2: the real
#     control plane of tests/it/control_plane/.
# The Python packages go to the python3 on the PATH.
set -euo pipefail

mode="${1:-all}"
# What the tests use besides building (not for build, deb, package), what the package's tests
# use (not for build, deb), and cargo-deb (not for build).
tests=yes packaging=yes cargo_deb=yes
case "$mode" in
  build) tests= packaging= cargo_deb= ;;
  deb) tests= packaging= ;;
  package) tests= ;;
esac

need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
# A recommendation of protobuf-compiler, which --no-install-recommends leaves out: without it
# protoc cannot find google/protobuf/descriptor.proto and the etcd client does not build.
[ -e /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
if [ -n "$packaging" ]; then
  command -v lintian >/dev/null || need+=(lintian)
  command -v man >/dev/null || need+=(man-db)
  command -v systemd-analyze >/dev/null || need+=(systemd)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v gzip >/dev/null || need+=(gzip)
  command -v unshare >/dev/null || need+=(util-linux)
fi
if [ -n "$tests" ]; then
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
  command -v htpasswd >/dev/null || need+=(apache2-utils)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  command -v mariadb-install-db >/dev/null || need+=(mariadb-server)
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

if [ -n "$tests" ] && ! python3 -c 'import cryptography' 2>/dev/null; then
  echo "install-deps: pip install cryptography (for $(command -v python3))"
  python3 -m pip install --quiet cryptography 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages cryptography
fi

if [ -n "$tests" ] && ! python3 -c 'import prometheus_client.openmetrics.parser' 2>/dev/null; then
  echo "install-deps: pip install prometheus-client (for $(command -v python3))"
  python3 -m pip install --quiet prometheus-client 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages prometheus-client
fi

if [ -n "$tests" ] && ! python3 -c 'import kubernetes, yaml' 2>/dev/null; then
  echo "install-deps: pip install kubernetes (for $(command -v python3))"
  python3 -m pip install --quiet kubernetes 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages kubernetes
fi

tools="${ROTOR_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rotor-tools}"

# go_install WHAT PACKAGE@VERSION WHO [LDFLAGS]: build a pinned Go tool into $tools/bin (outside
# the repo); WHO says what goes without it when Go is missing (an error under CI).
go_install() {
  local what=$1 package=$2 who=$3 ldflags=${4:-}
  local go
  go=$(command -v go || echo /usr/local/go/bin/go)
  if [ ! -x "$go" ]; then
    echo "install-deps: Go is missing: $what cannot be built; $who" >&2
    [ -z "${CI:-}" ] || exit 1
    return 0
  fi
  echo "install-deps: go install $package (into $tools/bin)"
  mkdir -p "$tools/bin"
  GOBIN="$tools/bin" "$go" install ${ldflags:+-ldflags "$ldflags"} "$package"
}

# The real kine (k3s's etcd API over SQL), pinned.
KINE_VERSION=v0.17.5
if [ -n "$tests" ] && ! "$tools/bin/kine" --version 2>/dev/null | grep -q "$KINE_VERSION"; then
  go_install "kine ($KINE_VERSION)" "github.com/k3s-io/kine@$KINE_VERSION" "the kine tests fail under CI" \
    "-X github.com/k3s-io/kine/pkg/version.Version=$KINE_VERSION"
fi

# The real control plane, pinned: kube-apiserver, kube-controller-manager and kubectl v1.37.2
# built from the Go module proxy (tests/it/control_plane/), about 7 minutes the first time.
if [ -n "$tests" ]; then
  "$(dirname "$0")/build-control-plane.sh"
fi

# cosign, pinned: it signs plugins the way vendors on cosign do (tests/it/cosign.rs).
COSIGN_VERSION=v2.6.5
if [ -n "$tests" ] && ! "$tools/bin/cosign" version 2>/dev/null | grep -q "GitVersion:.*${COSIGN_VERSION}"; then
  go_install "cosign ($COSIGN_VERSION)" "github.com/sigstore/cosign/v2/cmd/cosign@$COSIGN_VERSION" \
    "the cosign tests fail under CI"
fi

# OPA, the peer engine of benches/peers.rs (only for `make bench`), pinned.
OPA_VERSION=v1.22.4
if [ "$mode" = bench ] && ! "$tools/bin/opa" version 2>/dev/null | grep -q "^Version: ${OPA_VERSION#v}$"; then
  go_install "OPA ($OPA_VERSION)" "github.com/open-policy-agent/opa@$OPA_VERSION" \
    "benches/peers.rs leaves it out"
fi

# cargo-deb, pinned, built once into the same cache (make deb).
CARGO_DEB_VERSION=3.8.0
if [ -n "$cargo_deb" ] && ! "$tools/cargo-deb/bin/cargo-deb" --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
  echo "install-deps: cargo install cargo-deb@$CARGO_DEB_VERSION (into $tools/cargo-deb)"
  cargo install --quiet --locked --version "$CARGO_DEB_VERSION" --root "$tools/cargo-deb" cargo-deb
fi

# A minimal Debian root (debootstrap --variant=minbase), made once and kept as a tarball: the
# package's tests install the .deb into a fresh copy of it with dpkg -i, as on a real machine.
chroot_tar="$tools/debian-bookworm-minbase.tar"
if [ -n "$packaging" ] && [ ! -s "$chroot_tar" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: debootstrap needs root: the package's dpkg -i test fails under CI" >&2
    [ -z "${CI:-}" ] || exit 1
  else
    echo "install-deps: debootstrap --variant=minbase bookworm (into $chroot_tar)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    debootstrap --variant=minbase bookworm "$work/root" http://deb.debian.org/debian >"$work/log" 2>&1 ||
      { tail -20 "$work/log" >&2; echo "install-deps: debootstrap failed" >&2; exit 1; }
    mkdir -p "$tools"
    tar -C "$work/root" -cf "$chroot_tar.tmp" . && mv "$chroot_tar.tmp" "$chroot_tar"
  fi
fi
