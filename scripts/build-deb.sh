#!/usr/bin/env bash
# make deb: the Debian package of this checkout, target/debian/rotor_<version>-1_<arch>.deb.
#
# The release binary must be built (make build). Its own definitions make the man pages
# (`rotor manpages`) and the shell completions (`rotor completion`) into
# target/release/deb-assets; cargo-deb (installed by `scripts/install-deps.sh deb` into
# $ROTOR_TOOLS_DIR) packs them with the binary, the policy bundles, the systemd units and the
# maintainer scripts of packaging/debian, as host/Cargo.toml's [package.metadata.deb] lists.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${ROTOR_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rotor-tools}"
cargo_deb="$tools/cargo-deb/bin/cargo-deb"
target="${CARGO_TARGET_DIR:-target}"
bin="$target/release/rotor"
assets="$target/release/deb-assets"

[ -x "$bin" ] || { echo "build-deb: $bin is missing: make build first" >&2; exit 1; }
[ -x "$cargo_deb" ] || { echo "build-deb: cargo-deb is missing: scripts/install-deps.sh deb" >&2; exit 1; }
for b in default strict; do
  ls "policies/$b/plugins/"*.wasm >/dev/null 2>&1 ||
    { echo "build-deb: policies/$b/plugins is empty: make plugins first" >&2; exit 1; }
done

rm -rf "$assets"
mkdir -p "$assets/completions"
"$bin" manpages --out "$assets/man"
gzip -9n "$assets/man/"*.1
"$bin" completion bash >"$assets/completions/rotor.bash"
"$bin" completion zsh >"$assets/completions/_rotor"
"$bin" completion fish >"$assets/completions/rotor.fish"

# --no-build: the binary is the one make build made (and the tests run); cargo-deb strips it.
"$cargo_deb" --no-build --package rotor "$@"
