//! The agent's data dir: k3s's agent layout, written through the same generations, lock and
//! recovery as a server's ([`crate::datadir`]), without a datastore. Every file the agent
//! keeps is a managed file (`agent/client-kubelet.crt -> ../.rotor/current/agent/...`), so
//! one pass's certificates, keys, CA files and kubeconfigs become visible in one rename, and a
//! key never sits beside a certificate it does not match.

use std::path::{Path, PathBuf};

use crate::datadir::{DataDir, Entry, FileChanges, Intent, NewFile, Options};
use crate::fs::{Kind, Root};

/// The agent's own record in its data dir: node name and program, so that a data dir is never
/// used for two nodes.
pub const STATE_FILE: &str = "agent/rotor-agent.json";
/// The node password (created once, 0600): it binds the node name on the servers.
pub const PASSWORD_FILE: &str = "agent/node-password";

/// The files an agent of `program` keeps, relative to its data dir.
pub fn managed_files(program: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = [
        "client-kubelet.crt".to_string(),
        "client-kubelet.key".into(),
        "serving-kubelet.crt".into(),
        "serving-kubelet.key".into(),
        "client-kube-proxy.crt".into(),
        "client-kube-proxy.key".into(),
        format!("client-{program}-controller.crt"),
        format!("client-{program}-controller.key"),
        "client-ca.crt".into(),
        "server-ca.crt".into(),
        "kubelet.kubeconfig".into(),
        "kubeproxy.kubeconfig".into(),
        format!("{program}controller.kubeconfig"),
    ]
    .into_iter()
    .map(|f| Path::new("agent").join(f))
    .collect();
    files.push(PathBuf::from(STATE_FILE));
    files.push(PathBuf::from(PASSWORD_FILE));
    files
}

/// The agent's data dir, held under its exclusive lock for as long as the agent runs.
#[derive(Debug)]
pub struct AgentDir {
    dir: DataDir,
    entries: Vec<Entry>,
    live: Option<Root>,
}

/// The data dir cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DirError(pub String);

impl From<crate::datadir::DataDirError> for DirError {
    fn from(e: crate::datadir::DataDirError) -> DirError {
        DirError(e.to_string())
    }
}

impl From<crate::fs::FsError> for DirError {
    fn from(e: crate::fs::FsError) -> DirError {
        DirError(e.to_string())
    }
}

impl AgentDir {
    /// Open (creating it if needed) the data dir at `path` for an agent of `program`: take the
    /// exclusive lock, finish or roll back a change an agent that died left in flight, remove
    /// its debris, put the links in place.
    ///
    /// # Errors
    /// Another rotor holds it past the lock timeout, it is a rotor server's data dir, others
    /// may write to it, or its state is damaged.
    pub fn open(path: &Path, program: &str, options: Options) -> Result<AgentDir, DirError> {
        let root = Root::create_ambient(path)?;
        root.refuse_if_shared(Path::new("."))?;
        let mut dir = DataDir::lock_exclusive(root, options)?;
        let entries: Vec<Entry> = managed_files(program)
            .into_iter()
            .map(Entry::File)
            .collect();
        dir.check_permissions(&entries, dir.journal()?.map(|j| j.to), &[])?;
        if let Some(live) = dir.live() {
            let generation = dir.open_generation(live)?;
            if generation.kind(Path::new(crate::cluster::config::CONFIG_FILE))? == Some(Kind::File)
            {
                return Err(DirError(format!(
                    "{}: this is a rotor server's data dir (it has {}): an agent needs a data dir of its own",
                    path.display(),
                    crate::cluster::config::CONFIG_FILE
                )));
            }
        }
        recover(&mut dir, &entries)?;
        let removed = dir.clean(&entries)?;
        if !removed.is_empty() {
            tracing::info!("removed what an interrupted agent left: {removed:?}");
        }
        dir.ensure_links(&entries, false)?;
        let live = dir.live().map(|n| dir.open_generation(n)).transpose()?;
        Ok(AgentDir { dir, entries, live })
    }

    /// The content of managed file `rel` in the live generation (`None`: not there).
    ///
    /// # Errors
    /// It cannot be read.
    pub fn read(&self, rel: &Path) -> Result<Option<Vec<u8>>, DirError> {
        let Some(live) = &self.live else {
            return Ok(None);
        };
        match live.kind(rel)? {
            Some(Kind::File) => Ok(Some(live.read(rel)?)),
            _ => Ok(None),
        }
    }

    /// The path of managed file `rel` as consumers open it (absolute when the data dir was
    /// named by an absolute path).
    pub fn path(&self, rel: &Path) -> PathBuf {
        self.dir.root().absolute_path().join(rel)
    }

    /// Make `files` live together: the next generation staged, journaled, switched in one
    /// rename, links and journal completed. Returns the generation now live.
    ///
    /// # Errors
    /// Nothing could be written (nothing changed), or the switch was interrupted (the next
    /// agent run finishes it).
    pub fn commit(&mut self, files: FileChanges) -> Result<Option<u64>, DirError> {
        if files.is_empty() {
            return Ok(None);
        }
        let adopt = self.dir.live().is_none();
        let to = self.dir.stage(&files, &self.entries)?;
        let journal = self
            .dir
            .new_journal(to, adopt, Intent::default(), Vec::new());
        if let Err(e) = self.dir.write_journal(&journal) {
            let _ = self.dir.discard(&journal);
            return Err(e.into());
        }
        crate::fs::failpoint("agent:journaled");
        if let Err(e) = self.dir.switch(to) {
            if self.dir.live() != Some(to) {
                let _ = self.dir.discard(&journal);
            }
            return Err(e.into());
        }
        crate::fs::failpoint("agent:switched");
        for w in self.dir.complete(&journal, &self.entries)? {
            crate::say!("rotor agent: warning: {w}");
        }
        self.live = Some(self.dir.open_generation(to)?);
        Ok(Some(to))
    }
}

/// A file to write: its content and mode.
pub(super) fn file(content: impl Into<Vec<u8>>, mode: u32) -> Option<NewFile> {
    Some(NewFile {
        content: content.into(),
        mode,
    })
}

/// Finish or roll back the change a dead agent left: without a datastore, a staged generation
/// is complete (it is renamed into place only once whole), so it rolls forward; a journal
/// without it rolls back.
fn recover(dir: &mut DataDir, entries: &[Entry]) -> Result<(), DirError> {
    let Some(journal) = dir.journal()? else {
        return Ok(());
    };
    let who = format!(
        "an interrupted 'rotor {}' (pid {}, started {})",
        journal.command, journal.pid, journal.started
    );
    if dir.live() == Some(journal.to) || dir.generations()?.contains(&journal.to) {
        if dir.live() != Some(journal.to) {
            dir.switch(journal.to)?;
        }
        for w in dir.complete(&journal, entries)? {
            crate::say!("rotor agent: warning: {w}");
        }
        crate::say!(
            "rotor agent: recovered {who}: rolled forward to generation {}",
            journal.to
        );
    } else {
        dir.discard(&journal)?;
        crate::say!(
            "rotor agent: recovered {who}: rolled back (its generation was never complete)"
        );
    }
    Ok(())
}
