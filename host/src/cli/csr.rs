//! `rotor csr review` and `rotor csr sign`, one CSR (PEM or Kubernetes object) or a batch.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;

use super::Exit;
use super::args::{CsrArgs, CsrFormat, GlobalArgs};
use super::cluster::now;
use super::output::{self, out, outln};
use crate::cluster::{Cluster, ClusterError, Layout, LoadedCa};
use crate::csr::batch::{self, Item, ItemInput, Summary};
use crate::csr::{self, Evidence, SignerLimits, Verdict, k8s};
use crate::pki::CaSigner;
use crate::policy::Bundle;

/// Exit statuses of `csr review` and `csr sign` for one CSR.
fn exit_for(verdict: &Verdict) -> Exit {
    match verdict {
        Verdict::Approve { .. } => Exit::Success,
        Verdict::Deny { .. } => Exit::Attention,
        Verdict::Abstain { .. } => Exit::Pending,
    }
}

fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading standard input")?;
        return Ok(buf);
    }
    Ok(crate::fs::Root::read_ambient_file(path)?)
}

/// The evidence `--node-ip` and `--node-evidence` give.
fn evidence(args: &CsrArgs) -> anyhow::Result<Evidence> {
    let map = args.node_evidence.as_deref().map(read_input).transpose()?;
    Evidence::new(args.node_ips.clone(), map.as_deref()).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}",
            args.node_evidence
                .as_deref()
                .unwrap_or(Path::new("-"))
                .display()
        )
    })
}

/// One input file, classified with the context flags of PEM CSRs.
fn item(name: &str, bytes: &[u8], args: &CsrArgs, evidence: &Evidence) -> Item {
    csr::classify(name, bytes, &args.context.pem_context(), evidence)
}

/// The data dir's CAs (for signing and for clamping lifetimes). No data dir is fine for a
/// review; a data dir that cannot be read is an error either way.
fn cas(
    global: &GlobalArgs,
    sign: bool,
) -> anyhow::Result<Option<(Layout, BTreeMap<&'static str, LoadedCa>)>> {
    let options = super::datadir_options(global, if sign { "csr sign" } else { "csr review" });
    match Cluster::open_read(&global.data_dir, &options) {
        Ok(cluster) => {
            let cas = cluster.cas_from_disk()?;
            // The CAs are in memory: writers need not wait for the batch.
            let (_, layout) = cluster.release();
            Ok(Some((layout, cas)))
        }
        Err(ClusterError::NotInitialized(_)) if !sign => Ok(None),
        Err(ClusterError::NotInitialized(dir)) => {
            anyhow::bail!(
                "{}: not an initialized data dir; signing needs its CAs (rotor init, or --data-dir)",
                dir.display()
            )
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) fn run(global: &GlobalArgs, args: CsrArgs, sign: bool) -> anyhow::Result<Exit> {
    let bundle = super::bundle(global)?;
    let at = now(args.now);
    let evidence = evidence(&args)?;
    let loaded = cas(global, sign)?;
    let signer_of = |signer: &str| -> Option<&CaSigner> {
        let (layout, cas) = loaded.as_ref()?;
        cas.get(layout.ca_for_signer(signer)?.name)?.signer()
    };

    let mut limits = SignerLimits::default();
    for (signer, seconds) in &args.max_lifetimes {
        limits.set_max_lifetime(signer.as_deref(), *seconds);
    }

    if args.dir.is_some() || args.jsonl.is_some() {
        return run_batch(&bundle, &args, &evidence, &signer_of, &limits, sign, at);
    }
    let path = args
        .csr
        .clone()
        .ok_or_else(|| anyhow::anyhow!("give --csr FILE (or --dir / --jsonl for a batch)"))?;
    let bytes = read_input(&path)?;
    let it = item(&path.display().to_string(), &bytes, &args, &evidence);
    let input = match &it.input {
        ItemInput::Invalid(e) => anyhow::bail!("{e}"),
        ItemInput::Object(o) => {
            if let Some(why) = &o.decided {
                outln!("{}", serde_json::to_string_pretty(&o.object)?);
                eprintln!("rotor: {}: {why}; left as it is", o.name);
                return Ok(Exit::Success);
            }
            &o.input
        }
        ItemInput::Pem(input) => {
            if args.context.usages.is_empty()
                && let Some((usages, from)) =
                    csr::default_usages(&input.ctx.signer_name, &input.der)
            {
                let list: Vec<String> = usages.iter().map(|u| format!("'{u}'")).collect();
                eprintln!(
                    "rotor: no --usage given: using {} ({from})",
                    list.join(", ")
                );
            }
            input
        }
    };
    let ca = signer_of(&input.ctx.signer_name);
    let review = csr::review(&bundle, input, ca.map(|c| c.facts.not_after), &limits, at)?;
    let certificate = match (&review.verdict, sign) {
        (Verdict::Approve { .. }, true) => {
            let ca = ca.ok_or_else(|| {
                anyhow::anyhow!(
                    "approved, but no CA of this data dir signs for '{}'",
                    input.ctx.signer_name
                )
            })?;
            Some(csr::sign(&review, ca)?)
        }
        _ => None,
    };

    if let ItemInput::Object(o) = &it.input {
        // Kubernetes mode: the object comes back with its status, for kubectl.
        let mut object = o.object.clone();
        k8s::write_back(&mut object, &review.verdict, certificate.as_deref(), at);
        write_out(
            args.out.as_deref(),
            format!("{}\n", serde_json::to_string_pretty(&object)?).as_bytes(),
        )?;
        eprintln!(
            "rotor: {}: {} ({})",
            o.name,
            review.verdict.kind(),
            review.verdict.summary()
        );
        return Ok(exit_for(&review.verdict));
    }
    match args.output {
        CsrFormat::Json => {
            let mut v = serde_json::to_value(&review)?;
            if let Some(c) = &certificate {
                v["certificate"] = serde_json::Value::String(c.clone());
            }
            outln!("{}", serde_json::to_string_pretty(&v)?);
        }
        CsrFormat::Text => {
            outln!("{}: {}", review.verdict.kind(), review.verdict.summary());
            for s in &review.stages {
                let plugin = s
                    .plugin
                    .as_deref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default();
                let line = format!("  {:<15} {:<8}{plugin} {}", s.stage, s.decision, s.detail);
                outln!("{}", line.trim_end());
            }
            for n in &review.notes {
                outln!("  note: {n}");
            }
        }
    }
    if let Some(c) = &certificate {
        match &args.out {
            Some(p) => {
                write_out(Some(p), c.as_bytes())?;
                eprintln!("rotor: certificate written to {}", p.display());
            }
            None if args.output == CsrFormat::Text => out!("{c}"),
            None => {}
        }
    }
    Ok(exit_for(&review.verdict))
}

fn write_out(path: Option<&Path>, bytes: &[u8]) -> anyhow::Result<()> {
    match path {
        None => {
            let mut stdout = std::io::stdout().lock();
            output::unless_reader_gone(stdout.write_all(bytes).and_then(|()| stdout.flush()))?;
            Ok(())
        }
        Some(p) => {
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let name = p
                .file_name()
                .ok_or_else(|| anyhow::anyhow!("{}: not a file name", p.display()))?;
            crate::fs::Root::open_ambient(dir)?.write_atomic(
                Path::new(name),
                bytes,
                crate::fs::PUBLIC_FILE,
            )?;
            Ok(())
        }
    }
}

/// The file an item's certificate (`.crt`, PEM input) or updated object (`.json`, Kubernetes
/// input) goes to in `--out-dir`: the object's `metadata.name`, else the input file's stem,
/// else (a `--jsonl` line) the stream's stem and line number, with `-2`, `-3`, ... when names
/// repeat. Only `[A-Za-z0-9._-]` are kept. `None` for an input that cannot produce either.
fn output_files(items: &[Item]) -> Vec<Option<PathBuf>> {
    let mut taken = std::collections::BTreeSet::new();
    items
        .iter()
        .map(|item| {
            let (ext, object_name) = match &item.input {
                ItemInput::Object(o) => ("json", Some(o.name.as_str()).filter(|n| !n.is_empty())),
                ItemInput::Pem(_) => ("crt", None),
                ItemInput::Invalid(_) => return None,
            };
            let stem = output_stem(&item.name, object_name);
            let mut file = format!("{stem}.{ext}");
            let mut n = 1;
            while !taken.insert(file.clone()) {
                n += 1;
                file = format!("{stem}-{n}.{ext}");
            }
            Some(PathBuf::from(file))
        })
        .collect()
}

fn output_stem(input: &str, object_name: Option<&str>) -> String {
    let base = match object_name {
        Some(name) => name.to_string(),
        None => match input.rsplit_once(':') {
            // `stream:line`
            Some((stream, line)) if line.chars().all(|c| c.is_ascii_digit()) => {
                let stem = Path::new(stream)
                    .file_stem()
                    .map_or_else(|| "stdin".into(), |s| s.to_string_lossy().into_owned());
                format!("{stem}-line-{line}")
            }
            _ => Path::new(input)
                .file_stem()
                .map_or_else(|| input.to_string(), |s| s.to_string_lossy().into_owned()),
        },
    };
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match clean.trim_start_matches('.') {
        "" => "csr".into(),
        rest => rest.to_string(),
    }
}

/// `--out-dir` never overwrites: before any CSR is decided, none of the files the batch could
/// write may exist.
fn check_outputs_free(root: &crate::fs::Root, files: &[Option<PathBuf>]) -> anyhow::Result<()> {
    if let Some(existing) = files.iter().flatten().find(|f| root.exists(f)) {
        anyhow::bail!(
            "{}: already exists; --out-dir never overwrites (choose an empty directory); nothing was decided or written",
            root.display(existing).display()
        );
    }
    Ok(())
}

/// Write each outcome's certificate or object to its file (see [`output_files`]).
fn write_outputs(
    root: &crate::fs::Root,
    outcomes: &[batch::Outcome],
    files: &[Option<PathBuf>],
) -> anyhow::Result<()> {
    for (o, file) in outcomes.iter().zip(files) {
        let Some(file) = file else { continue };
        let bytes = if let Some(obj) = &o.object {
            format!("{}\n", serde_json::to_string_pretty(obj)?)
        } else if let Some(cert) = &o.certificate {
            cert.clone()
        } else {
            continue;
        };
        root.write_atomic(file, bytes.as_bytes(), crate::fs::PUBLIC_FILE)?;
    }
    Ok(())
}

/// Run `work` with a progress bar on a terminal: `work` counts what it has done in `done`.
fn with_progress<T>(total: usize, work: impl FnOnce(&AtomicUsize) -> T) -> T {
    let done = AtomicUsize::new(0);
    let show = std::io::stderr().is_terminal() && total > 1;
    let bar = show.then(|| {
        let bar = indicatif::ProgressBar::new(total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} CSRs {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    std::thread::scope(|scope| {
        let ticker = bar.as_ref().map(|bar| {
            let done = &done;
            scope.spawn(move || {
                while done.load(Ordering::Relaxed) < total {
                    bar.set_position(done.load(Ordering::Relaxed) as u64);
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                bar.finish_and_clear();
            })
        });
        let result = work(&done);
        if let Some(t) = ticker {
            let _ = t.join();
        }
        result
    })
}

/// One JSON line per outcome on standard output; a reader that went away ends it quietly.
fn print_outcomes(outcomes: &[batch::Outcome]) -> anyhow::Result<()> {
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    for o in outcomes {
        let line = serde_json::to_string(o)?;
        if !output::unless_reader_gone(writeln!(stdout, "{line}"))? {
            break;
        }
    }
    output::unless_reader_gone(stdout.flush())?;
    Ok(())
}

fn run_batch<'ca>(
    bundle: &Bundle,
    args: &CsrArgs,
    evidence: &Evidence,
    signer: &(impl Fn(&str) -> Option<&'ca CaSigner> + Sync),
    limits: &SignerLimits,
    sign: bool,
    at: time::OffsetDateTime,
) -> anyhow::Result<Exit> {
    let started = std::time::Instant::now();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    if let (Some(path), None, None) = (&args.jsonl, &args.dir, &args.out_dir) {
        let how = batch::Decide {
            limits,
            sign_approved: sign,
            now: at,
        };
        let stream = Stream {
            bundle,
            args,
            evidence,
            signer,
            how,
            threads,
            started,
        };
        let s = stream.run(path)?;
        report(&s, started, threads);
        return Ok(if s.errors > 0 {
            Exit::Attention
        } else {
            Exit::Success
        });
    }
    // Read every input first (names and bytes), then classify them on every core: output
    // files need every name first (to make them unique), and a directory is read whole.
    let mut raw: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(dir) = &args.dir {
        let root = crate::fs::Root::open_ambient(dir)?;
        for name in root.list_dir(Path::new("."))? {
            let is_csr = [".json", ".csr", ".pem"].iter().any(|s| name.ends_with(s));
            if !is_csr || name.starts_with('.') {
                continue;
            }
            let bytes = root.read(Path::new(&name))?;
            raw.push((name, bytes));
        }
    }
    let stream_text;
    let mut lines: Vec<(String, &[u8])> = Vec::new();
    if let Some(path) = &args.jsonl {
        stream_text = String::from_utf8(read_input(path)?)
            .with_context(|| format!("{}: not UTF-8", path.display()))?;
        for (n, line) in stream_text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            lines.push((format!("{}:{}", path.display(), n + 1), line.as_bytes()));
        }
    }
    let inputs: Vec<(&str, &[u8])> = raw
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .chain(lines.iter().map(|(n, b)| (n.as_str(), *b)))
        .collect();
    let items = csr::classify_all(&inputs, &args.context.pem_context(), evidence, threads)
        .ok_or_else(|| anyhow::anyhow!("internal error while reading the batch's CSRs"))?;
    if args.context.usages.is_empty() && items.iter().any(|i| matches!(i.input, ItemInput::Pem(_)))
    {
        eprintln!(
            "rotor: PEM CSRs without --usage: each is reviewed with the usages it requests in its own extensions, else its signer's standard usages"
        );
    }
    let files = output_files(&items);
    let out_dir = match &args.out_dir {
        Some(d) => {
            let root = crate::fs::Root::create_ambient(d)?;
            check_outputs_free(&root, &files)?;
            Some(root)
        }
        None => None,
    };
    let how = batch::Decide {
        limits,
        sign_approved: sign,
        now: at,
    };
    let outcomes = with_progress(items.len(), |done| {
        batch::process(bundle, &items, signer, &how, threads, done)
    });
    if let Some(root) = &out_dir {
        write_outputs(root, &outcomes, &files)?;
    }
    print_outcomes(&outcomes)?;
    let s = Summary::of(&outcomes);
    report(&s, started, threads);
    Ok(if s.errors > 0 {
        Exit::Attention
    } else {
        Exit::Success
    })
}

fn report(s: &Summary, started: std::time::Instant, threads: usize) {
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "rotor: {} CSRs in {:.2} s ({:.0}/s on {threads} threads): {} approved ({} signed), {} denied, {} pending, {} skipped, {} errors",
        s.total,
        secs,
        s.total as f64 / secs.max(1e-9),
        s.approved,
        s.signed,
        s.denied,
        s.pending,
        s.skipped,
        s.errors
    );
}

/// Lines of a `--jsonl` stream taken at a time: each part is parsed, decided and printed before
/// the next is read, so memory does not grow with the batch.
const STREAM_PART: usize = 1024;

/// A `--jsonl` batch printed to standard output, streamed in parts of [`STREAM_PART`] lines.
/// Each line's outcome is the same as in a batch read whole; what differs: when the reader of
/// the output goes away, the lines not yet read are not decided (`csr sign` writes nothing but
/// its output), and a read error stops the stream after the lines already printed.
struct Stream<'a, 'ca, F: Fn(&str) -> Option<&'ca CaSigner> + Sync> {
    bundle: &'a Bundle,
    args: &'a CsrArgs,
    evidence: &'a Evidence,
    signer: &'a F,
    how: batch::Decide<'a>,
    threads: usize,
    started: std::time::Instant,
}

impl<'ca, F: Fn(&str) -> Option<&'ca CaSigner> + Sync> Stream<'_, 'ca, F> {
    fn run(&self, path: &Path) -> anyhow::Result<Summary> {
        use std::io::BufRead;
        let reader: Box<dyn BufRead> = if path == Path::new("-") {
            Box::new(std::io::BufReader::new(std::io::stdin()))
        } else {
            Box::new(std::io::BufReader::new(crate::fs::Root::open_ambient_file(
                path,
            )?))
        };
        let mut total = Summary::default();
        let mut part: Vec<(String, Vec<u8>)> = Vec::with_capacity(STREAM_PART);
        let mut warned = false;
        let mut reader = reader;
        let mut n = 0usize;
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    // What was decided is printed already: say how far it got, then fail.
                    report(&total, self.started, self.threads);
                    return Err(anyhow::anyhow!(
                        "{}: reading line {}: {e} (the lines before it were decided and printed)",
                        path.display(),
                        n + 1
                    ));
                }
            }
            n += 1;
            // A line that is not UTF-8 or not a CSR becomes that line's error outcome.
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            part.push((format!("{}:{n}", path.display()), line));
            if part.len() == STREAM_PART {
                if !self.part(&part, &mut total, &mut warned)? {
                    return Ok(total);
                }
                part.clear();
            }
        }
        if !part.is_empty() {
            self.part(&part, &mut total, &mut warned)?;
        }
        Ok(total)
    }

    /// Decide and print one part; `false` when the reader of the output went away.
    fn part(
        &self,
        part: &[(String, Vec<u8>)],
        total: &mut Summary,
        warned: &mut bool,
    ) -> anyhow::Result<bool> {
        let inputs: Vec<(&str, &[u8])> = part
            .iter()
            .map(|(n, l)| (n.as_str(), l.as_slice()))
            .collect();
        let items = csr::classify_all(
            &inputs,
            &self.args.context.pem_context(),
            self.evidence,
            self.threads,
        )
        .ok_or_else(|| anyhow::anyhow!("internal error while reading the batch's CSRs"))?;
        if !*warned
            && self.args.context.usages.is_empty()
            && items.iter().any(|i| matches!(i.input, ItemInput::Pem(_)))
        {
            *warned = true;
            eprintln!(
                "rotor: PEM CSRs without --usage: each is reviewed with the usages it requests in its own extensions, else its signer's standard usages"
            );
        }
        let done = AtomicUsize::new(0);
        let outcomes = batch::process(
            self.bundle,
            &items,
            self.signer,
            &self.how,
            self.threads,
            &done,
        );
        total.add(&Summary::of(&outcomes));
        let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
        for o in &outcomes {
            let line = serde_json::to_string(o)?;
            if !output::unless_reader_gone(writeln!(stdout, "{line}"))? {
                return Ok(false);
            }
        }
        Ok(output::unless_reader_gone(stdout.flush())?)
    }
}
