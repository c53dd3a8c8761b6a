#![allow(
    unreachable_pub,
    reason = "test helpers are shared between the test modules"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "tests set up and inspect files directly, as an operator would"
)]

//! rotor's integration tests: real compiled plugins, real certificates, real files.
//!
//! The plugins are built by `make test` (`cargo xtask build-plugins` and
//! `cargo xtask build-test-plugins`) before this binary runs.

mod common;

mod acceptance;
mod adopt;
mod agent;
mod bundles;
mod ca_rotation;
mod cli;
mod cluster;
mod compat;
mod control_plane;
mod cosign;
mod csr;
mod datastores;
mod default_plugins;
mod diff;
mod distribution;
mod etcd;
mod floor;
mod fuzz_corpus;
mod installed;
mod kine;
mod package;
mod plugin_signing;
mod registry_logins;
mod sandbox;
mod serve;
mod sqlite;
mod state;
mod supervisor;
mod vendor;
