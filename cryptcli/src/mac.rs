//! The file MAC: HMAC-SHA256 over the metadata and every path, kind and value token.
//!
//! Per-value AES-GCM already stops a value from being edited or moved, but not from being
//! dropped, nor a key from being added with a value copied from elsewhere, nor the metadata
//! from being changed. The MAC closes those gaps. Entries are sorted by path before hashing,
//! so a formatter that reorders keys leaves the MAC valid, while anything that adds, drops
//! or renames a key, changes a value, turns an object into an array, or edits the metadata
//! breaks it. Comments and whitespace are not covered: they never reach the program.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::document::{path_json, Document};
use crate::Key;

/// What the MAC covers besides the document's nodes.
pub(crate) struct Metadata<'a> {
    pub(crate) version: u32,
    pub(crate) key_id: &'a str,
    pub(crate) entries: usize,
}

/// The exact bytes the MAC is computed over (see README "MAC").
pub(crate) fn input(doc: &Document, meta: &Metadata<'_>) -> Vec<u8> {
    let mut nodes = Vec::new();
    doc.walk(|v| nodes.push((path_json(&v.path), v.kind.as_str(), v.leaf.unwrap_or(""))));
    nodes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut out = format!(
        "orcastrate-crypt\nversion {}\nformat {}\nkey_id {}\nentries {}\n",
        meta.version,
        doc.format().mac_name(),
        meta.key_id,
        meta.entries
    )
    .into_bytes();
    for (path, kind, token) in nodes {
        out.extend_from_slice(path.as_bytes());
        out.push(b'\t');
        out.extend_from_slice(kind.as_bytes());
        out.push(b'\t');
        out.extend_from_slice(token.as_bytes());
        out.push(b'\n');
    }
    out
}

/// The MAC of `input` under `key`, as standard base64.
pub(crate) fn compute(key: &Key, input: &[u8]) -> String {
    STANDARD.encode(hmac(key, input).finalize().into_bytes())
}

/// Whether `mac` (base64, as stored) is the MAC of `input`; compared in constant time.
pub(crate) fn verify(key: &Key, input: &[u8], mac: &str) -> bool {
    match STANDARD.decode(mac) {
        Ok(bytes) => hmac(key, input).verify_slice(&bytes).is_ok(),
        Err(_) => false,
    }
}

fn hmac(key: &Key, input: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256>>::new_from_slice(key.mac_key().as_ref())
        .expect("hmac accepts keys of any length");
    mac.update(input);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Format;

    #[test]
    fn input_is_sorted_and_covers_structure() {
        let doc = Document::parse(r#"{"b": {"x": "t1"}, "a": []}"#, Format::Json, "t").unwrap();
        let meta = Metadata {
            version: 1,
            key_id: "00",
            entries: 1,
        };
        let text = String::from_utf8(input(&doc, &meta)).unwrap();
        // Sorted by bytes: ',' (0x2c) comes before ']' (0x5d), so a child can sort before
        // its parent. Any fixed order works; this one is the spec's.
        assert_eq!(
            text,
            "orcastrate-crypt\nversion 1\nformat json\nkey_id 00\nentries 1\n\
             [\"a\"]\tarray\t\n[\"b\",\"x\"]\tvalue\t\"t1\"\n[\"b\"]\tobject\t\n"
        );
        let reordered =
            Document::parse(r#"{"a": [], "b": {"x": "t1"}}"#, Format::Json, "t").unwrap();
        assert_eq!(input(&reordered, &meta), text.as_bytes());
    }
}
