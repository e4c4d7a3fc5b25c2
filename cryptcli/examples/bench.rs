//! Run with
//!
//! ```sh
//! cargo run --release -p orcastrate-crypt --example bench
//! ```
//!
//! Times encryption and decryption of a 1,000-key config in both formats: a fresh encrypt
//! (every value gets a new nonce), a re-encrypt of unchanged plaintext (every token reused,
//! which costs one decryption per value), and a verified decrypt (every tag plus the MAC).
//! Each figure is the median of several runs; text parsing and writing are included. The
//! last two figures go through files as the CLI does (read, verify the existing output,
//! write a temporary file, fsync, rename, fsync the directory).

use std::time::{Duration, Instant};

use orcastrate_crypt::{
    decrypt, decrypt_file, encrypt, encrypt_file, Document, EncryptedDocument, Format, Key,
};

/// Values in the benchmark file, as the issue asks.
const KEYS: usize = 1_000;
/// Runs per figure; the median is printed.
const RUNS: usize = 21;

fn main() {
    let key = Key::generate().expect("system random generator");
    println!("orcastrate-crypt benchmark: {KEYS} keys, median of {RUNS} runs");
    for (format, text) in [
        (Format::Json, json_config()),
        (Format::Dotenv, dotenv_config()),
    ] {
        let plain = Document::parse(&text, format, "bench").unwrap();
        assert_eq!(plain.len(), KEYS);
        let fresh = median(|| {
            let doc = Document::parse(&text, format, "bench").unwrap();
            encrypt(&doc, &key, &[], "bench").unwrap().to_text()
        });
        let encrypted_text = encrypt(&plain, &key, &[], "bench").unwrap().to_text();
        let previous = EncryptedDocument::parse(&encrypted_text, format, "bench").unwrap();
        let reuse = median(|| {
            let doc = Document::parse(&text, format, "bench").unwrap();
            let enc = encrypt(&doc, &key, &[&previous], "bench")
                .unwrap()
                .to_text();
            assert_eq!(enc, encrypted_text, "unchanged values keep their tokens");
            enc
        });
        let dec = median(|| {
            let enc = EncryptedDocument::parse(&encrypted_text, format, "bench").unwrap();
            decrypt(&enc, &key, "bench").unwrap().to_text()
        });
        let dir = tempfile::tempdir().expect("temporary directory");
        let ext = format.extension();
        let (plain_path, enc_path) = (
            dir.path().join(format!("decrypted_bench.{ext}")),
            dir.path().join(format!("encrypted_bench.{ext}")),
        );
        std::fs::write(&plain_path, &text).unwrap();
        let mut i = 0;
        let file_enc = median(|| {
            // Change one value each time, so the file is really rewritten.
            i += 1;
            let changed = text.replacen("secret-0-", &format!("secret-0-{i}-"), 1);
            std::fs::write(&plain_path, changed).unwrap();
            let report = encrypt_file(&plain_path, &enc_path, &key, false).unwrap();
            format!("{report:?}")
        });
        let file_dec = median(|| {
            decrypt_file(&enc_path, &plain_path, &key).unwrap();
            String::new()
        });
        println!(
            "{format:>6}: {} KiB plaintext, {} KiB encrypted | encrypt {} | re-encrypt unchanged {} | decrypt+verify {} | file encrypt (1 changed) {} | file decrypt {}",
            text.len() / 1024,
            encrypted_text.len() / 1024,
            ms(fresh),
            ms(reuse),
            ms(dec),
            ms(file_enc),
            ms(file_dec)
        );
    }
}

/// A nested JSON config: 100 services of 10 settings of mixed types.
fn json_config() -> String {
    let mut out = String::from("{\n");
    for s in 0..KEYS / 10 {
        out.push_str(&format!("  \"service_{s}\": {{\n"));
        for k in 0..10 {
            let value = match k % 3 {
                0 => format!("\"secret-{s}-{k}-{}\"", "x".repeat(24)),
                1 => format!("{}", s * 100 + k),
                _ => "true".to_owned(),
            };
            let comma = if k < 9 { "," } else { "" };
            out.push_str(&format!("    \"setting_{k}\": {value}{comma}\n"));
        }
        let comma = if s < KEYS / 10 - 1 { "," } else { "" };
        out.push_str(&format!("  }}{comma}\n"));
    }
    out.push_str("}\n");
    out
}

/// A flat dotenv config with a comment every ten lines.
fn dotenv_config() -> String {
    let mut out = String::new();
    for i in 0..KEYS {
        if i % 10 == 0 {
            out.push_str(&format!("# group {}\n", i / 10));
        }
        out.push_str(&format!("SETTING_{i}=\"secret-{i}-{}\"\n", "x".repeat(24)));
    }
    out
}

fn median(mut f: impl FnMut() -> String) -> Duration {
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed()
        })
        .collect();
    times.sort();
    times[RUNS / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
