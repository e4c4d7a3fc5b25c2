//! Encrypted documents: their metadata block, and encryption and decryption of whole
//! documents.
//!
//! Encryption reuses the token of every value whose path and plaintext did not change
//! (checked by opening the old token, so a reused token is always authentic), which keeps
//! `git diff` down to the keys that really changed. Decryption checks, in order: format
//! version, key id, every value's tag, the number of values, and the MAC, and reports the
//! first failure precisely.

use std::collections::HashMap;

use crate::cipher::{Cipher, OpenError};
use crate::document::{path_display, path_json, Body, Line, Node, Segment};
use crate::format::{dotenv, json};
use crate::{mac, Document, Error, Format, Key};

/// The format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// The top-level JSON key that holds the metadata; refused in plaintext.
pub const JSON_METADATA_KEY: &str = "_orcastrate";

/// The start of the dotenv comment line that holds the metadata; refused in plaintext.
pub const DOTENV_METADATA_PREFIX: &str = "#orcastrate";

/// An encrypted config: structure in clear, every value an `ENC[…]` token, plus metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedDocument {
    /// Leaves hold bare tokens (not JSON-quoted), whatever the format.
    doc: Document,
    key_id: String,
    entries: usize,
    mac: String,
}

impl EncryptedDocument {
    /// Parses an encrypted file and its metadata, without any key.
    ///
    /// `file` is used only in error messages.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] if the text does not parse or has no valid metadata,
    /// [`Error::UnknownVersion`] if the metadata names another format version.
    pub fn parse(text: &str, format: Format, file: &str) -> Result<EncryptedDocument, Error> {
        let mut doc = Document::parse(text, format, file)?;
        let fields = match &mut doc.body {
            Body::Json(members) => json_metadata(members, file)?,
            Body::Dotenv(lines) => dotenv_metadata(lines, file)?,
        };
        let meta = Fields { fields, file };
        match meta.get("version")? {
            "1" => {}
            other => {
                return Err(Error::UnknownVersion {
                    file: file.to_owned(),
                    found: other.chars().take(20).collect(),
                    supported: FORMAT_VERSION,
                });
            }
        }
        let key_id = meta.get("key_id")?.to_owned();
        if key_id.len() != 16 || !key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::malformed(
                file,
                "metadata key_id is not 16 hex digits",
            ));
        }
        let entries = meta
            .get("entries")?
            .parse()
            .map_err(|_| Error::malformed(file, "metadata entries is not a count"))?;
        let mac = meta.get("mac")?.to_owned();
        if let Some((name, _)) = meta
            .fields
            .iter()
            .find(|(n, _)| !["version", "key_id", "entries", "mac"].contains(&n.as_str()))
        {
            return Err(Error::malformed(
                file,
                format!("unknown metadata field {name:?}"),
            ));
        }
        if let Body::Json(_) = doc.body {
            // In JSON the tokens are string literals; everything else stays as written and
            // is later reported as "not encrypted".
            doc.try_map_leaves(|_, leaf| {
                Ok::<_, Error>(json::decode_string(leaf).unwrap_or_else(|| leaf.to_owned()))
            })?;
        }
        Ok(EncryptedDocument {
            doc,
            key_id,
            entries,
            mac,
        })
    }

    /// The id of the key the file was encrypted with (see [`Key::id`]).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The document's format.
    pub fn format(&self) -> Format {
        self.doc.format()
    }

    /// The number of encrypted values.
    pub fn len(&self) -> usize {
        self.doc.len()
    }

    /// Whether there are no values at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the file: the document with its tokens, then the metadata (a last top-level
    /// `_orcastrate` object in JSON, a last `#orcastrate …` comment line in dotenv).
    pub fn to_text(&self) -> String {
        match &self.doc.body {
            Body::Json(_) => {
                let quote = |s: &str| {
                    let mut out = String::with_capacity(s.len() + 2);
                    json::write_string(&mut out, s);
                    out
                };
                let mut quoted = self.doc.clone();
                quoted
                    .try_map_leaves(|_, token| Ok::<_, std::convert::Infallible>(quote(token)))
                    .unwrap_or_else(|never| match never {});
                let Body::Json(mut members) = quoted.body else {
                    unreachable!("a clone of a json body")
                };
                members.push((
                    JSON_METADATA_KEY.to_owned(),
                    Node::Object(vec![
                        ("version".to_owned(), Node::Leaf(FORMAT_VERSION.to_string())),
                        ("key_id".to_owned(), Node::Leaf(quote(&self.key_id))),
                        ("entries".to_owned(), Node::Leaf(self.entries.to_string())),
                        ("mac".to_owned(), Node::Leaf(quote(&self.mac))),
                    ]),
                ));
                json::write_document(&members)
            }
            Body::Dotenv(lines) => {
                let mut lines = lines.clone();
                lines.push(Line::Text(format!(
                    "{DOTENV_METADATA_PREFIX} version={FORMAT_VERSION} key_id={} entries={} mac={}",
                    self.key_id, self.entries, self.mac
                )));
                dotenv::write(&lines)
            }
        }
    }

    /// The token of every value, keyed by canonical path.
    fn tokens(&self) -> HashMap<String, &str> {
        let mut tokens = HashMap::new();
        self.doc.walk(|v| {
            if let Some(token) = v.leaf {
                tokens.insert(path_json(&v.path), token);
            }
        });
        tokens
    }

    fn mac_input(&self) -> Vec<u8> {
        mac::input(
            &self.doc,
            &mac::Metadata {
                version: FORMAT_VERSION,
                key_id: &self.key_id,
                entries: self.entries,
            },
        )
    }
}

/// Encrypts a plaintext document.
///
/// For every value whose path and plaintext are the same as in one of `previous` (files
/// encrypted with the same key), that file's token is kept byte for byte; every other
/// value gets a fresh nonce.
///
/// # Errors
///
/// [`Error::Malformed`] if the plaintext uses the reserved metadata key or comment,
/// [`Error::Io`] if the system random generator fails.
pub fn encrypt(
    plain: &Document,
    key: &Key,
    previous: &[&EncryptedDocument],
    file: &str,
) -> Result<EncryptedDocument, Error> {
    check_reserved(plain, file)?;
    let key_id = key.id();
    let cipher = Cipher::new(key);
    let old: Vec<HashMap<String, &str>> = previous
        .iter()
        .filter(|p| p.key_id == key_id && p.format() == plain.format())
        .map(|p| p.tokens())
        .collect();
    let mut doc = plain.clone();
    doc.try_map_leaves(|path, leaf| {
        let aad = path_json(path);
        let plaintext = leaf;
        for tokens in &old {
            if let Some(token) = tokens.get(&aad) {
                if cipher.open(token, &aad).as_deref() == Ok(plaintext) {
                    return Ok((*token).to_owned());
                }
            }
        }
        cipher.seal(plaintext, &aad).map_err(|e| {
            Error::io(
                "read random bytes from",
                "the system generator",
                std::io::Error::other(e.to_string()),
            )
        })
    })?;
    let mut enc = EncryptedDocument {
        entries: doc.len(),
        doc,
        key_id,
        mac: String::new(),
    };
    enc.mac = mac::compute(key, &enc.mac_input());
    Ok(enc)
}

/// Decrypts and verifies an encrypted document.
///
/// # Errors
///
/// [`Error::WrongKey`] if the file names another key id; [`Error::Integrity`] for a value
/// that is not encrypted, fails its tag (naming the path it was moved from, if it was),
/// a changed number of values, or a MAC that does not verify; [`Error::Malformed`] for a
/// token that is not valid. Messages name key paths, never values.
pub fn decrypt(enc: &EncryptedDocument, key: &Key, file: &str) -> Result<Document, Error> {
    if enc.key_id != key.id() {
        return Err(Error::WrongKey {
            file: file.to_owned(),
            file_key_id: enc.key_id.clone(),
            key_id: key.id(),
        });
    }
    let cipher = Cipher::new(key);
    let format = enc.format();
    let mut doc = enc.doc.clone();
    doc.try_map_leaves(|path, token| {
        let aad = path_json(path);
        match cipher.open(token, &aad) {
            Ok(plain) => stored_plaintext(format, plain).ok_or_else(|| {
                Error::malformed(
                    file,
                    format!(
                        "value at {} does not decrypt to a JSON scalar",
                        path_display(path)
                    ),
                )
            }),
            Err(OpenError::NotEncrypted) => Err(Error::integrity(
                file,
                format!(
                    "value at {} is not encrypted (added or edited outside orcastrate-crypt)",
                    path_display(path)
                ),
            )),
            Err(OpenError::Malformed) => Err(Error::malformed(
                file,
                format!(
                    "value at {} is not a valid ENC[…] token (truncated?)",
                    path_display(path)
                ),
            )),
            Err(OpenError::Authentication) => Err(Error::integrity(
                file,
                moved_from(enc, &cipher, token, path).map_or_else(
                    || {
                        format!(
                            "value at {} fails authentication: tampered with, or its key renamed",
                            path_display(path)
                        )
                    },
                    |from| {
                        format!(
                            "value at {} was encrypted for {from}: values were swapped or moved",
                            path_display(path)
                        )
                    },
                ),
            )),
        }
    })?;
    let found = doc.len();
    if found != enc.entries {
        let what = if found < enc.entries {
            "dropped"
        } else {
            "added"
        };
        return Err(Error::integrity(
            file,
            format!(
                "{} values recorded, {found} found: a key was {what} outside orcastrate-crypt",
                enc.entries
            ),
        ));
    }
    if !mac::verify(key, &enc.mac_input(), &enc.mac) {
        return Err(Error::integrity(
            file,
            "mac mismatch: keys, structure or metadata were changed outside orcastrate-crypt",
        ));
    }
    Ok(doc)
}

/// The display paths of values that differ between two encrypted versions of a file:
/// changed, added or removed (all values if there is no old version). With the same key,
/// unchanged values keep their token, so comparing tokens is enough.
pub fn changed_paths(old: Option<&EncryptedDocument>, new: &EncryptedDocument) -> Vec<String> {
    let old_tokens = old.map(EncryptedDocument::tokens).unwrap_or_default();
    let mut changed = Vec::new();
    let mut seen = std::collections::HashSet::new();
    new.doc.walk(|v| {
        if let Some(token) = v.leaf {
            let key = path_json(&v.path);
            if old_tokens.get(&key) != Some(&token) {
                changed.push(path_display(&v.path));
            }
            seen.insert(key);
        }
    });
    if let Some(old) = old {
        old.doc.walk(|v| {
            if v.leaf.is_some() && !seen.contains(&path_json(&v.path)) {
                changed.push(path_display(&v.path));
            }
        });
    }
    changed
}

/// Checks a decrypted value and turns it into a plaintext leaf.
fn stored_plaintext(format: Format, plain: String) -> Option<String> {
    match format {
        Format::Json => json::canonical_scalar(&plain),
        Format::Dotenv => (!plain.contains('\n') || is_quoted(&plain)).then_some(plain),
    }
}

fn is_quoted(value: &str) -> bool {
    value.starts_with(['"', '\'', '`'])
}

/// The path a token was really encrypted for, if it opens under another path of the file.
/// Only runs on the error path, so trying every path is affordable.
fn moved_from(
    enc: &EncryptedDocument,
    cipher: &Cipher,
    token: &str,
    path: &[Segment],
) -> Option<String> {
    let mut found = None;
    enc.doc.walk(|v| {
        if found.is_none()
            && v.leaf.is_some()
            && v.path != path
            && cipher.open(token, &path_json(&v.path)).is_ok()
        {
            found = Some(path_display(&v.path));
        }
    });
    found
}

fn check_reserved(plain: &Document, file: &str) -> Result<(), Error> {
    match &plain.body {
        Body::Json(members) => {
            if members.iter().any(|(k, _)| k == JSON_METADATA_KEY) {
                return Err(Error::malformed(
                    file,
                    format!(
                        "the top-level key {JSON_METADATA_KEY} is reserved for metadata (is this file already encrypted?)"
                    ),
                ));
            }
        }
        Body::Dotenv(lines) => {
            if lines
                .iter()
                .any(|l| matches!(l, Line::Text(t) if is_dotenv_metadata(t)))
            {
                return Err(Error::malformed(
                    file,
                    format!(
                        "comments starting with {DOTENV_METADATA_PREFIX} are reserved for metadata (is this file already encrypted?)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn is_dotenv_metadata(line: &str) -> bool {
    line.trim_start().starts_with(DOTENV_METADATA_PREFIX)
}

/// Metadata fields as (name, value text) pairs, to be checked in one place for both formats.
struct Fields<'a> {
    fields: Vec<(String, String)>,
    file: &'a str,
}

impl Fields<'_> {
    fn get(&self, name: &str) -> Result<&str, Error> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| Error::malformed(self.file, format!("metadata has no {name} field")))
    }
}

/// Removes and returns the `_orcastrate` object's fields (string values unquoted).
fn json_metadata(
    members: &mut Vec<(String, Node)>,
    file: &str,
) -> Result<Vec<(String, String)>, Error> {
    let at = members
        .iter()
        .position(|(k, _)| k == JSON_METADATA_KEY)
        .ok_or_else(|| {
            Error::malformed(
                file,
                format!(
                    "no {JSON_METADATA_KEY} metadata: not an encrypted file (or it was truncated)"
                ),
            )
        })?;
    let (_, node) = members.remove(at);
    let Node::Object(fields) = node else {
        return Err(Error::malformed(
            file,
            format!("{JSON_METADATA_KEY} is not an object"),
        ));
    };
    fields
        .into_iter()
        .map(|(name, value)| match value {
            Node::Leaf(text) => Ok((name, json::decode_string(&text).unwrap_or(text))),
            _ => Err(Error::malformed(
                file,
                format!("metadata field {name:?} is not a scalar"),
            )),
        })
        .collect()
}

/// Removes and returns the fields of the `#orcastrate k=v …` line.
fn dotenv_metadata(lines: &mut Vec<Line>, file: &str) -> Result<Vec<(String, String)>, Error> {
    let mut found = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| matches!(l, Line::Text(t) if is_dotenv_metadata(t)))
        .map(|(i, _)| i);
    let at = found.next().ok_or_else(|| {
        Error::malformed(
            file,
            format!(
                "no {DOTENV_METADATA_PREFIX} metadata line: not an encrypted file (or it was truncated)"
            ),
        )
    })?;
    if found.next().is_some() {
        return Err(Error::malformed(file, "more than one metadata line"));
    }
    let Line::Text(text) = lines.remove(at) else {
        unreachable!("filtered on text lines")
    };
    let rest = &text.trim_start()[DOTENV_METADATA_PREFIX.len()..];
    rest.split_whitespace()
        .map(|field| {
            field
                .split_once('=')
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .ok_or_else(|| Error::malformed(file, "metadata line fields must be name=value"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
    }

    fn enc(text: &str, format: Format) -> EncryptedDocument {
        let plain = Document::parse(text, format, "p").unwrap();
        let e = encrypt(&plain, &key(), &[], "p").unwrap();
        EncryptedDocument::parse(&e.to_text(), format, "e").unwrap()
    }

    #[test]
    fn json_round_trip_hides_values() {
        let text = r#"{"db": {"password": "s3cret", "port": 5432}, "flags": [true, null]}"#;
        let e = enc(text, Format::Json);
        let written = e.to_text();
        assert!(!written.contains("s3cret") && !written.contains("5432"));
        assert!(written.contains("\"_orcastrate\": {"));
        let plain = decrypt(&e, &key(), "e").unwrap();
        assert_eq!(plain, Document::parse(text, Format::Json, "p").unwrap());
    }

    #[test]
    fn dotenv_round_trip_keeps_comments() {
        let text = "# database\nexport DB=\"a b\"\n\nPORT=1\n";
        let e = enc(text, Format::Dotenv);
        let written = e.to_text();
        assert!(written.starts_with("# database\nexport DB=ENC["));
        assert!(written
            .lines()
            .last()
            .unwrap()
            .starts_with("#orcastrate version=1 key_id="));
        assert_eq!(decrypt(&e, &key(), "e").unwrap().to_text(), text);
    }

    #[test]
    fn unchanged_values_keep_their_tokens() {
        let first = enc(r#"{"a": "1", "b": "2"}"#, Format::Json);
        let plain =
            Document::parse(r#"{"b": "2", "a": "changed", "c": 3}"#, Format::Json, "p").unwrap();
        let second = encrypt(&plain, &key(), &[&first], "p").unwrap();
        assert_eq!(first.tokens()["[\"b\"]"], second.tokens()["[\"b\"]"]);
        assert_ne!(first.tokens()["[\"a\"]"], second.tokens()["[\"a\"]"]);
        assert_eq!(changed_paths(Some(&first), &second), ["a", "c"]);
    }
}
