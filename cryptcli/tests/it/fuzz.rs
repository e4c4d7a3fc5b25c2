//! Property tests standing in for a fuzzer on the crypt format's parser and decrypt path
//! (issue 5, bad-input matrix).
//!
//! Three properties, each fed through [`decrypt_file`] exactly as the CLI's `decrypt` and the
//! agent read a committed file (read, UTF-8 check, parse, verify, decrypt, write 0600):
//!
//! 1. arbitrary bytes, and arbitrary text built from the format's own fragments, never
//!    panic and never decrypt: they fail with exit code 3 (wrong key), 4 (integrity) or
//!    5 (malformed or unknown version), and no output file is written;
//! 2. a valid encrypted file (JSON or dotenv) with ONE byte flipped (any position, any
//!    non-zero xor mask) either fails with 3/4/5, or decrypts to exactly the original values;
//! 3. a valid file after a sequence of arbitrary mutations (flips, inserted, deleted,
//!    duplicated or overwritten ranges, truncation, swapped lines) either fails with 3/4/5,
//!    or decrypts to the original values (key order may differ: reordering is allowed).
//!
//! "The original values" is what a program receives: for JSON the parsed value, for dotenv
//! the variables [`env_vars`] derives. Comments and whitespace are deliberately outside the
//! MAC (`src/mac.rs`), so a flip inside a dotenv comment decrypts, with the same values;
//! the tests count those separately.
//!
//! Each property prints how many cases ran, the outcome counts and its wall time; run them
//! with `--nocapture` to see it. `PROPTEST_CASES` overrides the number of cases (default
//! 2,000 per property). Failures are persisted in `tests/proptest-regressions/fuzz.txt`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use orcastrate_crypt::{decrypt_file, encrypt, env_vars, Document, Error, Format, Key};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Key of the valid fixtures.
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

const PLAIN_JSON: &str = r#"{
  "PORT": 3000,
  "debug": false,
  "nothing": null,
  "ratio": -1.5e-3,
  "db": {
    "url": "postgres://app:s3cret@db.internal:5432/app",
    "hosts": ["a.internal", "b.internal"],
    "pool": {"min": 1, "max": 10},
    "empty": {},
    "none": []
  },
  "quote \"and\" escapes": "tab\tnewline\nunicode \u00e9 \ud83d\ude80",
  "": "empty key",
  "é": "utf-8 key"
}
"#;

const PLAIN_DOTENV: &str = "# the service's production config
PORT=3000
export API_KEY=abc123
DATABASE_URL=\"postgres://app:s3cret@db.internal/app\"

# a multi-line value
CERT=\"-----BEGIN-----
line two
-----END-----\"
SINGLE='single quoted # not a comment'
TRAILING=value # trailing comment
EMPTY=
";

/// A valid fixture: its encrypted text, and the values its plaintext gives a program.
struct Fixture {
    format: Format,
    encrypted: String,
    values: Values,
}

/// What a program gets from a decrypted document: for JSON the parsed value (object member
/// order is not significant), for dotenv its variables, sorted.
#[derive(Debug, PartialEq)]
enum Values {
    Json(serde_json::Value),
    Dotenv(Result<BTreeMap<String, String>, String>),
    /// Decrypted JSON that serde_json does not read.
    Unreadable(String),
}

fn values(doc: &Document) -> Values {
    match doc.format() {
        Format::Json => match serde_json::from_str(&doc.to_text()) {
            Ok(value) => Values::Json(value),
            Err(e) => Values::Unreadable(e.to_string()),
        },
        Format::Dotenv => Values::Dotenv(
            env_vars(doc, "fuzz")
                .map(|vars| vars.into_iter().collect())
                .map_err(|e| e.to_string()),
        ),
    }
}

fn key() -> &'static Key {
    static KEY_CELL: OnceLock<Key> = OnceLock::new();
    KEY_CELL.get_or_init(|| Key::from_base64(KEY).unwrap())
}

/// The two fixtures, encrypted once per run (fresh nonces each run).
fn fixtures() -> &'static [Fixture; 2] {
    static FIXTURES: OnceLock<[Fixture; 2]> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        [(Format::Json, PLAIN_JSON), (Format::Dotenv, PLAIN_DOTENV)].map(|(format, text)| {
            let plain = Document::parse(text, format, "fixture").unwrap();
            let encrypted = encrypt(&plain, key(), &[], "fixture").unwrap().to_text();
            Fixture {
                format,
                encrypted,
                values: values(&plain),
            }
        })
    })
}

/// How one input ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// Decrypted, to the original values and the identical text.
    Same,
    /// Decrypted to the original values; the text differs outside the values (a comment,
    /// whitespace, key order).
    SameValues,
    /// Refused with this exit code.
    Exit(u8),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Same => f.write_str("decrypted identically"),
            Outcome::SameValues => f.write_str("decrypted, same values, other text"),
            Outcome::Exit(code) => write!(f, "exit {code}"),
        }
    }
}

/// Feeds `bytes` as an encrypted file of `format` through [`decrypt_file`] in `dir` and
/// checks the documented behaviour. `original` is the fixture the bytes were derived from,
/// if any: a success must give exactly its values (without one, a success is a failure).
fn check(
    dir: &Path,
    bytes: &[u8],
    format: Format,
    original: Option<&Fixture>,
) -> Result<Outcome, TestCaseError> {
    let ext = format.extension();
    let input = dir.join(format!("encrypted_fuzz.{ext}"));
    let output = dir.join(format!("decrypted_fuzz.{ext}"));
    std::fs::write(&input, bytes).unwrap();
    let _ = std::fs::remove_file(&output);
    match decrypt_file(&input, &output, key()) {
        Ok(doc) => {
            let Some(original) = original else {
                return Err(TestCaseError::fail(
                    "input that is not derived from a valid file decrypted",
                ));
            };
            let got = values(&doc);
            prop_assert_eq!(
                &got,
                &original.values,
                "a mutated file decrypted to different values"
            );
            prop_assert!(output.exists(), "decrypted but wrote no output");
            Ok(if bytes == original.encrypted.as_bytes() {
                Outcome::Same
            } else {
                Outcome::SameValues
            })
        }
        Err(e) => {
            let code = e.exit_code();
            prop_assert!(
                matches!(
                    e,
                    Error::WrongKey { .. }
                        | Error::Integrity { .. }
                        | Error::Malformed { .. }
                        | Error::UnknownVersion { .. }
                ) && matches!(code, 3..=5),
                "undocumented error for a bad file (exit {}): {}",
                code,
                e
            );
            let message = e.to_string();
            prop_assert!(
                !message.contains(['\n', '\r']),
                "error message is not one line: {:?}",
                message
            );
            prop_assert!(!output.exists(), "an error left an output file behind");
            Ok(Outcome::Exit(code))
        }
    }
}

/// Runs `cases` cases of `strategy` through `test`, persisting failures like `proptest!`,
/// and prints the case count, outcome counts and wall time.
fn run<S>(name: &str, strategy: S, test: impl Fn(&Path, S::Value) -> Result<Outcome, TestCaseError>)
where
    S: Strategy,
    S::Value: fmt::Debug,
{
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    // The default persistence, as `proptest!` sets it up: tests/proptest-regressions/fuzz.txt.
    let config = Config {
        cases,
        source_file: Some(file!()),
        ..Config::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let counts = std::cell::RefCell::new(BTreeMap::<Outcome, u64>::new());
    let started = Instant::now();
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |value| {
        let outcome = test(dir.path(), value)?;
        *counts.borrow_mut().entry(outcome).or_default() += 1;
        Ok(())
    });
    let elapsed = started.elapsed();
    let summary: Vec<String> = counts
        .borrow()
        .iter()
        .map(|(outcome, n)| format!("{outcome}: {n}"))
        .collect();
    let total: u64 = counts.borrow().values().sum();
    println!(
        "{name}: {total} inputs checked (incl. shrinking) in {:.2} s; {}",
        elapsed.as_secs_f64(),
        summary.join(", ")
    );
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

fn format_strategy() -> impl Strategy<Value = Format> {
    prop_oneof![Just(Format::Json), Just(Format::Dotenv)]
}

/// Text assembled from the format's own fragments, so that the parsers get past their
/// first byte far more often than with random bytes.
fn fragments() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(",".to_owned()),
        Just(":".to_owned()),
        Just("\"".to_owned()),
        Just("\n".to_owned()),
        Just("=".to_owned()),
        Just("#".to_owned()),
        Just("export ".to_owned()),
        Just("\"_orcastrate\": {\"version\": 1, \"key_id\": \"".to_owned()),
        Just("#orcastrate version=1 key_id=".to_owned()),
        Just(" entries=1 mac=".to_owned()),
        Just("ENC[AES256_GCM,".to_owned()),
        Just("ENC[".to_owned()),
        Just("\\u00".to_owned()),
        Just("\\ud83d".to_owned()),
        "[A-Za-z0-9+/=_-]{0,24}",
        any::<String>().prop_map(|s| s.chars().take(8).collect()),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

#[test]
fn arbitrary_input_never_decrypts_and_fails_with_a_documented_code() {
    let input = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        fragments().prop_map(String::into_bytes),
    ];
    run(
        "arbitrary bytes and fragments",
        (format_strategy(), input),
        |dir, (format, bytes)| check(dir, &bytes, format, None),
    );
}

#[test]
fn a_single_flipped_byte_never_decrypts_to_other_values() {
    let strategy = (0..2usize, any::<prop::sample::Index>(), 1..=255u8);
    run("one flipped byte", strategy, |dir, (which, at, mask)| {
        let fixture = &fixtures()[which];
        let mut bytes = fixture.encrypted.clone().into_bytes();
        let i = at.index(bytes.len());
        bytes[i] ^= mask;
        check(dir, &bytes, fixture.format, Some(fixture))
    });
}

/// One edit of a file's bytes; positions are fractions of the current length.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
    Delete(prop::sample::Index, usize),
    Overwrite(prop::sample::Index, Vec<u8>),
    Duplicate(prop::sample::Index, usize),
    Truncate(prop::sample::Index),
    SwapLines(prop::sample::Index, prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let index = any::<prop::sample::Index>;
    let bytes = || {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 1..8),
            prop::sample::select(vec![
                b"\"".to_vec(),
                b"\n".to_vec(),
                b",".to_vec(),
                b"{}".to_vec(),
                b"ENC[".to_vec(),
                b"]".to_vec(),
                b"#".to_vec(),
                b"=".to_vec(),
                b"\\".to_vec(),
                vec![0xc3],
                vec![0xff],
            ]),
        ]
    };
    prop_oneof![
        (index(), 1..=255u8).prop_map(|(i, m)| Mutation::Flip(i, m)),
        (index(), bytes()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (index(), 1..64usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (index(), bytes()).prop_map(|(i, b)| Mutation::Overwrite(i, b)),
        (index(), 1..64usize).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        index().prop_map(Mutation::Truncate),
        (index(), index()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let at = |i: &prop::sample::Index, len: usize| if len == 0 { 0 } else { i.index(len) };
    match m {
        Mutation::Flip(i, mask) => {
            if !bytes.is_empty() {
                let i = at(i, bytes.len());
                bytes[i] ^= mask;
            }
        }
        Mutation::Insert(i, b) => {
            let i = at(i, bytes.len() + 1);
            bytes.splice(i..i, b.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let i = at(i, bytes.len());
            let end = (i + n).min(bytes.len());
            bytes.drain(i..end);
        }
        Mutation::Overwrite(i, b) => {
            let i = at(i, bytes.len());
            for (k, byte) in b.iter().enumerate() {
                if let Some(slot) = bytes.get_mut(i + k) {
                    *slot = *byte;
                }
            }
        }
        Mutation::Duplicate(i, n) => {
            let i = at(i, bytes.len());
            let end = (i + n).min(bytes.len());
            let copy = bytes[i..end].to_vec();
            bytes.splice(end..end, copy);
        }
        Mutation::Truncate(i) => {
            let i = at(i, bytes.len());
            bytes.truncate(i);
        }
        Mutation::SwapLines(a, b) => {
            let mut lines: Vec<Vec<u8>> =
                bytes.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect();
            let (a, b) = (at(a, lines.len()), at(b, lines.len()));
            lines.swap(a, b);
            *bytes = lines.join(&b'\n');
        }
    }
}

#[test]
fn mutated_valid_files_fail_cleanly_or_keep_their_values() {
    let strategy = (0..2usize, prop::collection::vec(mutation(), 1..6));
    run("mutation sequences", strategy, |dir, (which, mutations)| {
        let fixture = &fixtures()[which];
        let mut bytes = fixture.encrypted.clone().into_bytes();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        check(dir, &bytes, fixture.format, Some(fixture))
    });
}

#[test]
fn the_fixtures_decrypt_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    for fixture in fixtures() {
        let outcome = check(
            dir.path(),
            fixture.encrypted.as_bytes(),
            fixture.format,
            Some(fixture),
        )
        .unwrap();
        assert_eq!(outcome, Outcome::Same);
    }
}
