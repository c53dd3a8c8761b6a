//! The fuzz corpus (`fuzz/corpus/<target>/`, grown by cargo-fuzz, minimized and committed)
//! replayed on stable through the same functions the fuzz targets call (`rotor::fuzz`): every
//! input that once crashed a parser, or reached new code, runs in every `make test`.

use crate::common::repo_root;

#[test]
fn every_fuzz_target_replays_its_corpus_without_a_panic() {
    let corpus = repo_root().join("fuzz").join("corpus");
    for (name, target) in rotor::fuzz::TARGETS {
        let dir = corpus.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (every target has a corpus)", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{}: empty corpus", dir.display());
        for input in &inputs {
            let data = std::fs::read(input).unwrap();
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                panic!("{name}: {} panics", input.display());
            }
        }
        // Every target has a fuzz_targets file that calls it.
        let source = repo_root()
            .join("fuzz/fuzz_targets")
            .join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&source)
            .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        assert!(
            text.contains(&format!("rotor::fuzz::{name}(data)")),
            "{text}"
        );
    }
}
