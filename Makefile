# rotor: the two commands of the README, and the steps they are made of.
#
#   make demo   build everything (wasm target, plugins, rotor) and run the demo on ./rotor-data
#   make test   build everything and run every test (what CI runs, through .ci/run)

CARGO ?= cargo
WASM_TARGETS := wasm32-unknown-unknown wasm32-wasip2

.PHONY: demo test setup build-deps deps deb-deps bench-deps plugins test-plugins build deb lint doc unit-tests integration-tests bench-build bench fuzz clean

demo: plugins build
	./scripts/demo.sh

test: plugins test-plugins lint doc unit-tests integration-tests bench-build

# The wasm targets; rust-toolchain.toml pins the toolchain that the plugin digests match.
setup: build-deps
	rustup target add $(WASM_TARGETS)

# protoc (the etcd client's gRPC code is generated at build time): installed when missing.
build-deps:
	./scripts/install-deps.sh build

# What the tests use besides: openssl, Python's cryptography, flock, mount, chattr, etcd and
# etcdctl, docker-registry (an OCI registry), PostgreSQL, MariaDB; installed when missing
# (apt-get as root); kine, cosign and the control plane (kube-apiserver, kube-controller-manager,
# kubectl v1.37.2, scripts/build-control-plane.sh) built with Go into ~/.cache/rotor-tools.
deps:
	./scripts/install-deps.sh

# cargo-deb (into the same cache as kine): what `make deb` needs.
deb-deps:
	./scripts/install-deps.sh deb

# deps, and OPA (benches/peers.rs's peer engine), built with Go into the same cache.
bench-deps:
	./scripts/install-deps.sh bench

# Default plugins -> components -> policies/*/plugins, digests checked against the pins.
plugins: setup
	$(CARGO) xtask build-plugins

# Hostile plugins for the sandbox tests -> target/test-plugins.
test-plugins: setup
	$(CARGO) xtask build-test-plugins

build: build-deps
	$(CARGO) build --locked --release -p rotor --bin rotor

# The Debian package: target/debian/rotor_<version>-1_<arch>.deb (docs/install.md).
deb: plugins build deb-deps
	./scripts/build-deb.sh

lint: build-deps
	$(CARGO) fmt --all --check
	$(CARGO) fmt --all --check --manifest-path guest-plugins/Cargo.toml
	$(CARGO) fmt --all --check --manifest-path tests/plugins/Cargo.toml
	$(CARGO) fmt --all --check --manifest-path fuzz/Cargo.toml
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	$(CARGO) clippy --locked --all-targets --manifest-path guest-plugins/Cargo.toml -- -D warnings
	$(CARGO) clippy --locked --all-targets --manifest-path tests/plugins/Cargo.toml -- -D warnings

# The library's documentation (missing docs and broken links are errors): what `cargo doc`
# shows is the surface a user of the library gets.
doc: build-deps
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --locked --no-deps -p rotor

# The plugins' rules on the host target, and the host's unit tests.
unit-tests: build-deps
	$(CARGO) test --locked --manifest-path guest-plugins/Cargo.toml
	$(CARGO) test --locked --workspace --lib --bins --examples

# Real plugins, real files, real TLS, the real binary (tests/it): the release build, the one
# that ships, which the crash and concurrency tests kill and race (tests/it/state.rs).
integration-tests: deps build deb
	ROTOR_TEST_BIN=$(CURDIR)/target/release/rotor $(CARGO) test --locked -p rotor --test it -- --show-output

# The benchmarks are not timed tests; CI only compiles them (dev profile) so they never rot.
bench-build: build-deps
	$(CARGO) build --locked -p rotor --benches

# The criterion suite (release profile, several minutes); see docs/performance.md.
bench: plugins test-plugins bench-deps
	$(CARGO) bench -p rotor

# Fuzz every parser of untrusted input for FUZZ_SECONDS each (nightly and cargo-fuzz, which
# this installs; not part of `make test`, which replays the committed corpus on stable
# through the same functions). New corpus entries land in fuzz/corpus/<target>/; crashes in
# fuzz/artifacts/<target>/.
FUZZ_SECONDS ?= 180
fuzz:
	./scripts/fuzz.sh $(FUZZ_SECONDS)

clean:
	$(CARGO) clean
	rm -rf policies/*/plugins rotor-data
