//! Fuzzing, bounded for CI, of what a worker decodes from Redis: the ARQ pickle decoder (behind
//! its guard), the payload parser and the local `file_ref` resolver. Each first replays the seed
//! corpus in `tests/corpus/`, then runs proptest over arbitrary bytes and over structured
//! generators that start from the corpus. The property is always the same: an answer (a value or
//! a stated error), never a panic, an abort or a read outside the storage root.
//! `DEDUP2D_PROPTEST_CASES=N` runs deeper (default 256 per property).

use std::path::PathBuf;

use dedup2d::contract::arq::JobRecord;
use dedup2d::contract::payload::FileRef;
use dedup2d::storage::{FileStorage, LocalStorage};
use dedup2d::worker::input;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("DEDUP2D_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn corpus(dir: &str) -> Vec<(String, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut out: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "empty corpus {dir}");
    out
}

#[test]
fn the_pickle_corpus_decodes_or_is_refused_as_named() {
    for (name, bytes) in corpus("pickle") {
        let got = JobRecord::decode(&bytes);
        if name.starts_with("ok-") {
            let rec = got.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(rec.first_str_arg(), Some("j1"), "{name}");
        } else {
            let err = got.expect_err(&name).to_string();
            eprintln!("{name}: {err}");
        }
    }
}

#[test]
fn the_payload_corpus_parses_or_fails_with_a_reason() {
    for (name, bytes) in corpus("payload") {
        // Invalid base64 is found when the bytes are needed (a dual-write job may not need them).
        let outcome = input::parse(Some(bytes))
            .input
            .map_err(|e| e.to_string())
            .and_then(|i| match i.source {
                input::FileSource::Embedded(Err(why)) => Err(why),
                _ => Ok(()),
            });
        if name.starts_with("ok-") {
            outcome.unwrap_or_else(|e| panic!("{name}: {e}"));
        } else {
            let err = outcome.expect_err(&name);
            assert!(!err.is_empty(), "{name}");
            eprintln!("{name}: {err}");
        }
    }
}

/// A storage root with one file inside, and a secret beside it (outside the root).
struct Root {
    _dir: tempfile::TempDir,
    storage: LocalStorage,
}

const SECRET: &[u8] = b"outside the root";

fn root() -> Root {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let uploads = dir.path().join("uploads");
    std::fs::create_dir_all(uploads.join("escape")).unwrap();
    std::fs::write(uploads.join("a"), b"inside").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), uploads.join("escape/secret")).unwrap();
    Root {
        storage: LocalStorage::new(&uploads).unwrap(),
        _dir: dir,
    }
}

fn never_reads_outside(
    root: &Root,
    rt: &tokio::runtime::Runtime,
    path: &str,
) -> Result<(), String> {
    let r = FileRef::Local { path: path.into() };
    match rt.block_on(root.storage.load(&r)) {
        Ok(bytes) if bytes.as_ref() == SECRET => Err(format!("{path:?} read the secret")),
        _ => Ok(()),
    }
}

#[test]
fn the_file_ref_corpus_never_leaves_the_root() {
    let root = root();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_, text) = corpus("file_ref").remove(0);
    for line in String::from_utf8(text).unwrap().lines() {
        let path = line.replace("\\0", "\0");
        never_reads_outside(&root, &rt, &path).unwrap();
    }
}

/// Byte-level mutations of a seed: flip, cut, insert.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::sample::select(seeds),
        proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8),
    )
        .prop_map(|(mut seed, edits)| {
            for (at, byte, op) in edits {
                if seed.is_empty() {
                    seed.push(byte);
                    continue;
                }
                let i = at % seed.len();
                match op {
                    0 => seed[i] ^= byte,
                    1 => seed.truncate(i),
                    _ => seed.insert(i, byte),
                }
            }
            seed
        })
}

/// Pickles nesting lists, tuples and dicts `depth` deep (protocol 2).
fn nested_pickle() -> impl Strategy<Value = (usize, Vec<u8>)> {
    proptest::collection::vec(0u8..3, 0..200).prop_map(|kinds| {
        let mut p = vec![0x80, 2];
        for k in &kinds {
            p.extend_from_slice(match k {
                0 => b"](".as_slice(),
                1 => b"(".as_slice(),
                _ => b"}(X\x01\x00\x00\x00k".as_slice(),
            });
        }
        p.push(b'N');
        for k in kinds.iter().rev() {
            p.push(match k {
                0 => b'e',
                1 => b't',
                _ => b'u',
            });
        }
        p.push(b'.');
        (kinds.len(), p)
    })
}

fn seeds(dir: &str) -> Vec<Vec<u8>> {
    corpus(dir).into_iter().map(|(_, b)| b).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn pickle_decoding_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = JobRecord::decode(&bytes);
    }

    #[test]
    fn pickle_decoding_of_mutated_records_never_panics(bytes in mutated(seeds("pickle"))) {
        let _ = JobRecord::decode(&bytes);
    }

    #[test]
    fn nesting_is_refused_exactly_past_the_limit((depth, bytes) in nested_pickle()) {
        let err = JobRecord::decode(&bytes).expect_err("not a job record").to_string();
        prop_assert_eq!(err.contains("nests deeper than 64 levels"), depth > 64, "{}", err);
    }

    #[test]
    fn payload_parsing_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = input::parse(Some(bytes));
    }

    #[test]
    fn payload_parsing_of_mutated_payloads_never_panics(bytes in mutated(seeds("payload"))) {
        let _ = input::parse(Some(bytes));
    }

    #[test]
    fn embedded_bytes_decode_to_what_was_encoded(data in proptest::collection::vec(any::<u8>(), 0..20_000),
                                                 wrap in proptest::option::of(1usize..100)) {
        use base64::Engine as _;
        let mut b64 = base64::engine::general_purpose::STANDARD.encode(&data);
        if let Some(w) = wrap {
            // Line breaks, as Python's encodebytes writes them (escaped in JSON).
            b64 = b64.as_bytes().chunks(w).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\n");
        }
        let raw = serde_json::json!({"tenant_id": "t", "file_bytes_b64": b64}).to_string();
        let parsed = input::parse(Some(raw.into_bytes())).input;
        if data.is_empty() {
            prop_assert!(parsed.is_err());
        } else {
            let got = parsed.unwrap();
            prop_assert_eq!(got.source, input::FileSource::Embedded(Ok(bytes::Bytes::from(data))));
        }
    }

    #[test]
    fn no_file_ref_path_reads_outside_the_root(parts in proptest::collection::vec(
        proptest::sample::select(vec!["..", ".", "a", "escape", "secret", "uploads", "", "\\", "\0", "%2e%2e", "..."]), 0..8),
        absolute in any::<bool>()) {
        let root = root();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let path = format!("{}{}", if absolute { "/" } else { "" }, parts.join("/"));
        prop_assert!(never_reads_outside(&root, &rt, &path).is_ok(), "{}", path);
    }
}
