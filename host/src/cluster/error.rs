//! What can go wrong in a cluster operation. Each variant carries the error it comes from as
//! its `source` (file system, datastore, key material, parsing, plugins, the data dir) or the
//! typed facts of the problem; the file or input concerned is named once, here.

use std::path::PathBuf;

use super::config::CONFIG_FILE;
use crate::datadir::DataDirError;
use crate::datastore::DatastoreError;
use crate::facts::FactsError;
use crate::fs::FsError;
use crate::input::Input;
use crate::pki::{PkiError, TokenError};
use crate::plugin::PluginError;

/// A cluster operation failed. Messages start with the file or the input they concern.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// A file of the data dir could not be read or written.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The datastore could not be read, opened or changed.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    /// A key or certificate could not be made or used.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A certificate, CSR or PEM file could not be parsed (the error names it).
    #[error(transparent)]
    Facts(#[from] FactsError),
    /// A plugin could not answer.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The data dir's lock, generations or journal.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The data dir holds no rotor configuration.
    #[error("{}: not initialized (no {CONFIG_FILE}): run 'rotor init' first", .0.display())]
    NotInitialized(PathBuf),
    /// `init` found a data dir that is already in use.
    #[error("{}: already initialized ({what}); refusing to touch it", .path.display())]
    AlreadyInitialized {
        /// The data dir.
        path: PathBuf,
        /// What shows that it is in use.
        what: String,
    },
    /// A file of the data dir is not what it should be.
    #[error("{}: {reason}", .path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The data dir's configuration file is not valid JSON of rotor's configuration (or, when
    /// writing, could not be serialized).
    #[error("{}: not a valid rotor configuration", .path.display())]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What JSON said.
        #[source]
        source: serde_json::Error,
    },
    /// A value the command was given is not acceptable.
    #[error("{input}: {reason}")]
    BadInput {
        /// Which value.
        input: Input,
        /// Why it is not acceptable.
        reason: String,
    },
    /// A token the command was given is not a token.
    #[error("{input}")]
    BadToken {
        /// Which token.
        input: Input,
        /// What is wrong with it.
        #[source]
        source: TokenError,
    },
    /// A token the command was given pins another CA than the cluster's.
    #[error("{input}: its CA hash {given} does not match the cluster CA ({cluster})")]
    TokenPinsAnotherCa {
        /// Which token.
        input: Input,
        /// The hash the token carries.
        given: String,
        /// The hash of the cluster's CA.
        cluster: String,
    },
    /// No token was given and the token file cannot be read.
    #[error("{}: no token to open the datastore with: give the cluster's token ({})", .path.display(), Input::Token)]
    TokenFile {
        /// The token file.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: FsError,
    },
    /// rotor keeps finding changes that dead writers left half done.
    #[error("{}: writers keep dying in the middle of their changes; look at their errors", .0.display())]
    WritersKeepDying(PathBuf),
    /// The datastore, or the record this data dir needs in it, is missing.
    #[error(
        "{store}: no {what}: the data dir was not initialized by rotor, or the datastore was removed"
    )]
    NoDatastore {
        /// The datastore: its directory, or its etcd endpoints.
        store: String,
        /// What is missing: the datastore or the bootstrap record.
        what: &'static str,
    },
    /// The bootstrap record lacks a field this layout needs.
    #[error("datastore {field}: missing from the bootstrap data")]
    MissingField {
        /// The record's field (`ServerCA`, `ServiceKey`, ...).
        field: &'static str,
    },
    /// The operation is refused: doing it would break the cluster or its trust.
    #[error("{0}")]
    Refused(String),
    /// The SAN policy denied names of a certificate rotor was to issue.
    #[error("the SAN policy denies names of {certificate}:\n  {}", .violations.join("\n  "))]
    NamesDenied {
        /// The certificate.
        certificate: String,
        /// Every violation.
        violations: Vec<String>,
    },
    /// A CA file on disk is newer than the datastore's copy (k3s's conflict rule).
    #[error(
        "{}: the copy on disk differs from the datastore and is newer (by {seconds} s): it could be a CA \
         rotation in progress or a manual change, and overwriting it could cause an outage; nothing was changed. \
         Load it with 'rotor certificate rotate-ca', or remove the file to restore the datastore's copy",
        .path.display()
    )]
    Conflict {
        /// The CA file on disk.
        path: PathBuf,
        /// How much newer it is.
        seconds: i64,
    },
    /// A service name this layout does not know.
    #[error("unknown service '{name}'; valid services: {}", .valid.join(", "))]
    UnknownService {
        /// The name given.
        name: String,
        /// Every service of the layout.
        valid: Vec<String>,
    },
    /// rotor broke one of its own rules: a bug, reported rather than acted on.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The change is in the datastore but not live in the data dir yet.
    #[error(
        "{}\nthe datastore holds this change but the data dir does not show it yet: the next rotor \
         command on this data dir finishes it (or run 'rotor certificate check')",
        chain(.0)
    )]
    Interrupted(Box<ClusterError>),
    /// The datastore commit may or may not have landed, and the datastore cannot be asked now.
    #[error(
        "{}\nwhether the datastore holds this change is not known (it cannot be reached to ask); \
         the data dir still shows the state before it: the next rotor command on this data dir \
         asks the datastore first, then finishes the change or rolls it back",
        chain(.0)
    )]
    Unsettled(Box<ClusterError>),
    /// The datastore commit failed and is known not to have landed.
    #[error("{0}; nothing was written")]
    NotWritten(#[source] DatastoreError),
}

impl ClusterError {
    /// The input this error is about and what is wrong with it, for a front end that names
    /// its inputs its own way (the CLI: `'--node-name': ...`).
    pub fn input_problem(&self) -> Option<(Input, String)> {
        match self {
            ClusterError::BadInput { input, reason } => Some((*input, reason.clone())),
            ClusterError::BadToken { input, source } => Some((*input, source.to_string())),
            ClusterError::TokenPinsAnotherCa {
                input,
                given,
                cluster,
            } => Some((
                *input,
                format!("its CA hash {given} does not match the cluster CA ({cluster})"),
            )),
            _ => None,
        }
    }
}

/// An error with every cause after it, as `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
