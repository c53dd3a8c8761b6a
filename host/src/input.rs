//! The values and options a front end gives rotor's operations, named in messages about them.
//!
//! Library messages never spell a command-line flag: they mention an [`Input`], which displays
//! in words (`the token`), or however the front end says (the CLI: `--token`) once it has called
//! [`name_inputs`].

use std::sync::OnceLock;

/// A value or option an operation was given, or could be given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Input {
    /// The node's name.
    NodeName,
    /// The key algorithm for generated keys.
    KeyType,
    /// The cluster's DNS domain.
    ClusterDomain,
    /// The cluster's current join token.
    Token,
    /// The join token to rotate to.
    NewToken,
    /// How many service-account keys to keep.
    KeepKeys,
    /// The root CA certificate of a custom CA set.
    RootCert,
    /// The intermediate CA certificate of a custom CA set.
    IntermediateCert,
    /// Going ahead despite problems a check calls forceable.
    Force,
    /// How long to wait for the data dir's lock.
    LockTimeout,
    /// An address the host holds as evidence for the requesting node.
    NodeIp,
    /// Evidence for many nodes at once.
    NodeEvidence,
    /// The policy bundle to decide with.
    Bundle,
    /// A PEM CSR's signer name.
    Signer,
    /// A PEM CSR's requesting user.
    Username,
    /// The shared datastore's endpoints.
    DatastoreEndpoint,
    /// The CA of the shared datastore's serving certificates.
    DatastoreCaFile,
    /// The client certificate for the shared datastore.
    DatastoreCertFile,
    /// The client certificate's key for the shared datastore.
    DatastoreKeyFile,
}

impl Input {
    /// What the value is, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Input::NodeName => "node name",
            Input::KeyType => "key type",
            Input::ClusterDomain => "cluster domain",
            Input::Token => "the token",
            Input::NewToken => "the new token",
            Input::KeepKeys => "service-account keys to keep",
            Input::RootCert => "root certificate",
            Input::IntermediateCert => "intermediate certificate",
            Input::Force => "forcing",
            Input::LockTimeout => "lock timeout",
            Input::NodeIp => "a node address",
            Input::NodeEvidence => "node evidence",
            Input::Bundle => "a policy bundle",
            Input::Signer => "a signer name",
            Input::Username => "the requesting user's name",
            Input::DatastoreEndpoint => "the datastore endpoint",
            Input::DatastoreCaFile => "the datastore's CA file",
            Input::DatastoreCertFile => "the datastore client certificate",
            Input::DatastoreKeyFile => "the datastore client key",
        }
    }
}

static NAMER: OnceLock<fn(Input) -> &'static str> = OnceLock::new();

/// How this process's front end names inputs in every message from here on (the CLI calls it
/// once with its flags). Later calls change nothing.
pub fn name_inputs(namer: fn(Input) -> &'static str) {
    let _ = NAMER.set(namer);
}

impl std::fmt::Display for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = NAMER
            .get()
            .map_or_else(|| self.describe(), |namer| namer(*self));
        f.write_str(name)
    }
}
