//! What the package makes from the command line's own definitions: shell completion scripts
//! (`rotor completion SHELL`, clap_complete) and man pages (`rotor manpages --out DIR`,
//! clap_mangen), so neither can drift from the flags rotor really takes.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::Exit;

/// `rotor completion SHELL`: the script on standard output.
pub(super) fn completion(shell: clap_complete::Shell) -> anyhow::Result<Exit> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut super::command(), "rotor", &mut script);
    match std::io::stdout().lock().write_all(&script) {
        // `rotor completion bash | head`: the reader has what it wanted.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("writing the completion script: {e}"))
        }
        _ => Ok(Exit::Success),
    }
}

/// `rotor manpages --out DIR`: `rotor.1` and one page per visible subcommand, named by its path
/// (`rotor-policy-pin.1`), each written atomically into DIR, uncompressed (a package gzips
/// them).
pub(super) fn manpages(out: &Path) -> anyhow::Result<Exit> {
    let root = crate::fs::Root::create_ambient(out)?;
    let mut pages = Vec::new();
    render(super::command(), "rotor", &mut pages)?;
    for (name, page) in &pages {
        root.write_atomic(Path::new(name), page, 0o644)?;
    }
    crate::say!(
        "rotor: wrote {} man pages into {}",
        pages.len(),
        out.display()
    );
    Ok(Exit::Success)
}

/// The page of `cmd` (whose name is already its whole path, `rotor-policy`, and which is typed
/// as `typed`, `rotor policy`), then its visible subcommands' pages, depth first.
fn render(
    cmd: clap::Command,
    typed: &str,
    pages: &mut Vec<(PathBuf, Vec<u8>)>,
) -> anyhow::Result<()> {
    let mut cmd = cmd;
    cmd.build();
    let name = cmd.get_name().to_string();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .map_err(|e| anyhow::anyhow!("rendering the man page of {name}: {e}"))?;
    pages.push((PathBuf::from(format!("{name}.1")), page));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        let full = format!("{name}-{}", sub.get_name());
        let typed = format!("{typed} {}", sub.get_name());
        // The page's NAME (what whatis and `man -k` index) is the file's name; the synopsis
        // shows what is typed.
        let sub = sub.clone().name(full).bin_name(typed.clone());
        render(sub, &typed, pages)?;
    }
    Ok(())
}
