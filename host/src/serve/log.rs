//! The decision log: every decision `rotor serve` takes or shadows, as one JSON line, to a file
//! rotated by size or to standard output; and reading it back (`rotor policy log`).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::fs::{FsError, PRIVATE_FILE, Root};

/// What a decision was about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// The certificate's name in its layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The certificate's serial number (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// A CSR's identity (its name, or its requester and subject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}

/// Whether the decision was acted on or only shadowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The active bundle decided, and rotor acted on it.
    Acted,
    /// The shadow bundle decided; nothing was done with it.
    Shadow,
}

impl Role {
    /// `acted` or `shadow`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Acted => "acted",
            Role::Shadow => "shadow",
        }
    }
}

/// One line of the decision log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// When (the server's clock).
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// `renewal`, `san` or `csr`.
    pub hook: String,
    /// What was decided about.
    pub subject: Subject,
    /// The bundle's name.
    pub bundle: String,
    /// The plugin asked, if any (else the built-in rule decided).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// The plugin's sha256 digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `plugin`, `failure_mode` or `built_in`.
    pub source: String,
    /// `keep`, `renew`, `allow`, `deny`, `approve`, `abstain`.
    pub decision: String,
    /// Why, in words: the plugin's reason, then the host's notes.
    #[serde(default)]
    pub reasons: Vec<String>,
    /// When the plugin wants to be asked again (a kept certificate).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub renew_at: Option<OffsetDateTime>,
    /// The lifetime asked for the replacement (a renewal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_seconds: Option<u64>,
    /// The certificate's notAfter.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub not_after: Option<OffsetDateTime>,
    /// The code of the plugin failure the failure mode answered for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Evaluation time, in milliseconds.
    pub latency_ms: f64,
    /// Acted on, or shadow.
    pub role: Role,
    /// A shadow decision: whether it differs from the active bundle's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disagrees: Option<bool>,
}

/// Where decision lines go.
pub(crate) enum Sink {
    Stdout,
    File(RotatingFile),
}

/// A log file rotated by size: `FILE` is renamed `FILE.1` (and `FILE.1` `FILE.2`, ...) when the
/// next line would take it past `max_bytes`; `keep` rotated files are kept.
pub(crate) struct RotatingFile {
    dir: Root,
    name: String,
    file: std::fs::File,
    len: u64,
    max_bytes: u64,
    keep: u32,
}

impl Sink {
    /// Open `path` (its directory must exist) to append to, or standard output.
    pub(crate) fn open(path: Option<&Path>, max_bytes: u64, keep: u32) -> Result<Sink, FsError> {
        let Some(path) = path else {
            return Ok(Sink::Stdout);
        };
        let (dir, name) = split(path)?;
        let (file, len) = dir.open_append(Path::new(&name), PRIVATE_FILE)?;
        Ok(Sink::File(RotatingFile {
            dir,
            name,
            file,
            len,
            max_bytes: max_bytes.max(1),
            keep,
        }))
    }

    /// Append one record. A failure is returned for the caller to report; the decision stands.
    pub(crate) fn write(&mut self, record: &DecisionRecord) -> Result<(), FsError> {
        let mut line = serde_json::to_string(record).unwrap_or_default();
        line.push('\n');
        match self {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(line.as_bytes());
                let _ = out.flush();
                Ok(())
            }
            Sink::File(f) => f.write(line.as_bytes()),
        }
    }
}

impl RotatingFile {
    fn write(&mut self, line: &[u8]) -> Result<(), FsError> {
        let len = line.len() as u64;
        if self.len > 0 && self.len + len > self.max_bytes {
            self.rotate()?;
        }
        self.file
            .write_all(line)
            .map_err(|e| FsError::io(self.dir.display(Path::new(&self.name)), e))?;
        self.len += len;
        Ok(())
    }

    /// Rotate. A failure leaves the current file in use and is not retried before another
    /// `max_bytes` were written, so a rotation that keeps failing (a full directory, no file
    /// descriptors) never shifts the older files away one by one.
    fn rotate(&mut self) -> Result<(), FsError> {
        let result = self.shift();
        if result.is_err() {
            self.len = 0;
        }
        result
    }

    fn shift(&mut self) -> Result<(), FsError> {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.name));
        if self.keep == 0 {
            self.dir.remove_file(Path::new(&self.name))?;
        } else {
            let oldest = numbered(self.keep);
            if self.dir.exists(&oldest) {
                self.dir.remove_file(&oldest)?;
            }
            for n in (1..self.keep).rev() {
                if self.dir.exists(&numbered(n)) {
                    self.dir.rename(&numbered(n), &numbered(n + 1))?;
                }
            }
            self.dir.rename(Path::new(&self.name), &numbered(1))?;
        }
        // Until this succeeds, lines go on to the renamed file, still open.
        let (file, len) = self.dir.open_append(Path::new(&self.name), PRIVATE_FILE)?;
        self.file = file;
        self.len = len;
        Ok(())
    }
}

fn split(path: &Path) -> Result<(Root, String), FsError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| FsError::io(path.to_path_buf(), std::io::ErrorKind::InvalidInput.into()))?;
    Ok((Root::open_ambient(parent)?, name))
}

/// A line of a decision log that is not a decision record.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file cannot be read.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A line is not a decision record.
    #[error("{}:{line}: not a decision record: {reason}", .path.display())]
    BadLine {
        /// The file.
        path: PathBuf,
        /// Its line number (from 1).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// Hand every record of the decision log `path` to `each`, oldest first; with `rotated`, its
/// rotated files (`FILE.N` ... `FILE.1`) first. One file is in memory at a time; empty lines
/// are skipped; a line that is not a record is an error naming the file and the line.
pub fn read(
    path: &Path,
    rotated: bool,
    mut each: impl FnMut(DecisionRecord),
) -> Result<(), LogError> {
    let (dir, name) = split(path)?;
    let mut files: Vec<PathBuf> = Vec::new();
    if rotated {
        let mut n = 1;
        while dir.exists(Path::new(&format!("{name}.{n}"))) {
            files.push(PathBuf::from(format!("{name}.{n}")));
            n += 1;
        }
        files.reverse();
    }
    files.push(PathBuf::from(&name));
    for file in files {
        let bytes = dir.read(&file)?;
        let text = String::from_utf8_lossy(&bytes);
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record = serde_json::from_str(line).map_err(|e| LogError::BadLine {
                path: dir.display(&file),
                line: i + 1,
                reason: e.to_string(),
            })?;
            each(record);
        }
    }
    Ok(())
}
