//! Output helpers: aligned text tables, JSON and YAML. Data goes to stdout; diagnostics to
//! stderr. Machine formats (JSON, YAML) are the serialized row types of the command, documented
//! where those types are defined.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

/// Write to standard output without ever panicking (`println!` panics when the reader has
/// gone, as in `rotor start | head`). A closed pipe is not an error for rotor: a writing
/// command carries on and completes its change; the output is simply not read. Any other
/// write error is reported once on stderr.
pub(crate) fn stdout_write(args: std::fmt::Arguments<'_>) {
    static REPORTED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = std::io::stdout().lock().write_fmt(args)
        && e.kind() != std::io::ErrorKind::BrokenPipe
        && !REPORTED.swap(true, Ordering::Relaxed)
    {
        let _ = writeln!(
            std::io::stderr(),
            "rotor: cannot write to standard output: {e}"
        );
    }
}

/// `print!` that never panics (see [`stdout_write`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::stdout_write(format_args!($($arg)*))
    };
}

/// `println!` that never panics (see [`stdout_write`]).
macro_rules! outln {
    () => {
        $crate::cli::output::stdout_write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::stdout_write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};

/// A write to standard output whose reader may be gone: a closed pipe is not an error (the
/// command completes; its output is simply not read), any other error is.
pub(crate) fn unless_reader_gone(r: std::io::Result<()>) -> std::io::Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
    }
}

/// Print rows as an aligned table with a header.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            out.push_str(c);
            if i < last {
                let pad = widths[i] + 3 - c.chars().count();
                out.push_str(&" ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub(crate) fn json<T: Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(format!("{}\n", serde_json::to_string_pretty(value)?))
}

pub(crate) fn yaml<T: Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_yaml_ng::to_string(value)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["long".into(), "x".into()],
                vec!["s".into(), "yy".into()],
            ],
        );
        assert_eq!(t, "A      BB\nlong   x\ns      yy\n");
    }
}
