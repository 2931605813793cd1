//! Replays the committed fuzz corpus (`tests/fuzz/corpus/<target>/`) through the fuzz targets'
//! own bodies on every test run, on the stable toolchain: an input the fuzzer once found (or a
//! seed) never panics again. `tests/fuzz/run.sh` does the coverage-guided search itself.

#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod targets;

#[test]
fn every_corpus_input_is_handled_without_a_panic() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut replayed = 0;
    for (name, target) in targets::TARGETS {
        let dir = root.join(name);
        let inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        assert!(!inputs.is_empty(), "{name} has no corpus");
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            target(&data);
            // The same bytes, cut: every prefix is input the network can send too.
            for cut in [1, data.len() / 2, data.len().saturating_sub(1)] {
                target(&data[..cut.min(data.len())]);
            }
            replayed += 1;
        }
    }
    assert!(
        replayed >= 19,
        "only {replayed} corpus inputs (the seeds alone are 19)"
    );
}
