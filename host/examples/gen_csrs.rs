//! Writes N kubelet-serving `CertificateSigningRequest` objects as JSON lines, and the address
//! evidence for their nodes, for the batch demo:
//!
//! ```sh
//! cargo run --release -p rotor --example gen_csrs -- 10000 rotor-data/csr-batch
//! rotor csr sign --jsonl rotor-data/csr-batch/csrs.jsonl \
//!     --node-evidence rotor-data/csr-batch/nodes.json > rotor-data/csr-batch/results.jsonl
//! ```
//!
//! Node `node-<i>` asks for DNS `node-<i>` and IP `10.<i / 65536>.<..>.<..>` (offset by one so
//! no address ends in .0), which the evidence file holds for it; every 50th request also claims
//! an address of another node, so the batch shows denials too. Keys are fresh ECDSA P-256. The
//! objects are the benches' (`benches/common.rs`).

#![allow(
    clippy::disallowed_methods,
    reason = "an example that writes demo inputs, not the library"
)]

#[path = "../../benches/common.rs"]
#[allow(
    dead_code,
    reason = "the example uses one of the benches' inputs, not all"
)]
mod common;

use std::io::Write;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: gen_csrs N DIR";
    let n: u32 = args.next().ok_or(usage)?.parse()?;
    let dir = PathBuf::from(args.next().ok_or(usage)?);
    if n == 0 || n >= 1 << 24 {
        return Err("N must be between 1 and 16777215".into());
    }
    std::fs::create_dir_all(&dir)?;

    let mut lines = std::io::BufWriter::new(std::fs::File::create(dir.join("csrs.jsonl"))?);
    let mut evidence = serde_json::Map::new();
    for i in 0..n {
        evidence.insert(
            format!("node-{i}"),
            serde_json::json!([common::node_address(i)]),
        );
        let extra = (i % 50 == 49).then(|| common::node_address(i - 1));
        writeln!(lines, "{}", common::kubelet_csr_object(i, extra))?;
    }
    lines.flush()?;
    std::fs::write(
        dir.join("nodes.json"),
        serde_json::to_string(&serde_json::Value::Object(evidence))?,
    )?;
    println!(
        "wrote {n} CSR objects to {} and their evidence to {}",
        dir.join("csrs.jsonl").display(),
        dir.join("nodes.json").display()
    );
    Ok(())
}
