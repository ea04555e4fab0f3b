//! Every fuzz target on stable, as part of the test suite (issue #12): its corpus (`fuzz/corpus/<target>/`, seeds
//! and past findings) replayed, then mutated inputs (bit flips, byte changes, insertions, deletions, splices of
//! two corpus entries; no coverage guidance, that is libFuzzer's job in `scripts/fuzz`) for
//! `FERRY_FUZZ_SMOKE_SECONDS` seconds per target (default 2). A panic is a finding: the input is written to
//! `target/fuzz-smoke/<target>-<n>.bin` (replay it with `scripts/fuzz`'s libFuzzer binary or this test) and the test
//! fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_fuzz_targets::TARGETS;
use ferry_testkit::Rng;

/// Uniform in `0..n`.
fn pick(rng: &mut Rng, n: usize) -> usize {
    rng.below(n as u64) as usize
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = workspace_root().join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading the corpus {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display())))
        .collect()
}

/// One random change (sometimes several) to `input`, splicing from `other`.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..1 + pick(rng, 4) {
        match pick(rng, 7) {
            0 if !input.is_empty() => {
                let i = pick(rng, input.len());
                input[i] ^= 1 << pick(rng, 8);
            }
            1 if !input.is_empty() => {
                let i = pick(rng, input.len());
                input[i] = [0, 0xff, 0x7f, 0x80, 1, b'$'][pick(rng, 6)];
            }
            2 => {
                let i = pick(rng, input.len() + 1);
                input.insert(i, rng.next_u64() as u8);
            }
            3 if !input.is_empty() => {
                let i = pick(rng, input.len());
                let n = 1 + pick(rng, 8.min(input.len() - i));
                input.drain(i..i + n);
            }
            4 if !other.is_empty() => {
                let at = pick(rng, input.len() + 1);
                let from = pick(rng, other.len());
                let n = 1 + pick(rng, other.len() - from);
                input.splice(at..at, other[from..from + n].iter().copied());
            }
            5 if input.len() >= 4 => {
                // A little-endian length field set to an interesting value.
                let i = pick(rng, input.len() - 3);
                let v: i32 = [0, 1, 4, 5, -1, i32::MAX, 16, 17][pick(rng, 8)];
                input[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ if !input.is_empty() => {
                let n = pick(rng, input.len());
                input.truncate(n);
            }
            _ => input.push(rng.next_u64() as u8),
        }
    }
    input.truncate(1 << 16);
}

fn save_finding(target: &str, n: u64, input: &[u8]) -> PathBuf {
    let dir = workspace_root().join("target/fuzz-smoke");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{target}-{n}.bin"));
    let _ = std::fs::write(&path, input);
    path
}

fn run_one(target: &str, f: fn(&[u8]), n: u64, input: &[u8]) {
    if std::panic::catch_unwind(|| f(input)).is_err() {
        let path = save_finding(target, n, input);
        panic!(
            "fuzz target {target} panicked on input {n} ({} bytes), saved as {}",
            input.len(),
            path.display()
        );
    }
}

#[test]
fn every_fuzz_target_replays_its_corpus_and_survives_mutations() {
    let seconds: u64 = std::env::var("FERRY_FUZZ_SMOKE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let seed: u64 = std::env::var("FERRY_FUZZ_SMOKE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_205);
    for (target, f) in TARGETS {
        let corpus = corpus(target);
        assert!(!corpus.is_empty(), "fuzz/corpus/{target} is empty");
        for (n, input) in corpus.iter().enumerate() {
            run_one(target, f, n as u64, input);
        }
        let mut rng = Rng(seed ^ target.len() as u64);
        let started = Instant::now();
        let mut runs = 0u64;
        while started.elapsed() < Duration::from_secs(seconds) {
            let mut input = corpus[pick(&mut rng, corpus.len())].clone();
            let other = &corpus[pick(&mut rng, corpus.len())];
            mutate(&mut rng, &mut input, other);
            run_one(target, f, runs, &input);
            runs += 1;
        }
        println!(
            "{target}: {} corpus inputs, {runs} mutated inputs in {seconds}s (seed {seed}), no panic",
            corpus.len()
        );
    }
}
