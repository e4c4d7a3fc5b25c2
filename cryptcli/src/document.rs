//! The in-memory shape of a config file, shared by both formats and by both the plaintext
//! and the encrypted form.
//!
//! A [`Document`] keeps keys and structure in their order; each leaf holds one string that
//! is either the value's plaintext (the canonical JSON text of a scalar, or the raw
//! right-hand side of a dotenv line) or, in an encrypted file, its `ENC[…]` token. Keeping
//! one shape for both forms is what lets encryption walk the leaves in place and lets the
//! MAC and the merge work the same way for JSON and dotenv.

use crate::format::{self, Format};
use crate::Error;

/// A config document: JSON or dotenv, plaintext or encrypted, keys in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub(crate) body: Body,
}

/// The two supported layouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body {
    /// A JSON document; the root is always an object.
    Json(Vec<(String, Node)>),
    /// A dotenv file: `KEY=value` lines with comments and blank lines kept.
    Dotenv(Vec<Line>),
}

/// One JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Object(Vec<(String, Node)>),
    Array(Vec<Node>),
    /// A scalar: its canonical JSON text in a plaintext document, its `ENC[…]` token in an
    /// encrypted one.
    Leaf(String),
}

/// One logical line of a dotenv file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line {
    /// A blank line or a comment, kept verbatim and in clear.
    Text(String),
    /// `[export ]KEY=value`; a multi-line quoted value is one entry.
    Entry(Entry),
}

/// A dotenv assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Whether the line starts with `export ` (kept so shells can `source` the file).
    pub(crate) export: bool,
    pub(crate) key: String,
    /// The raw right-hand side (quotes included) in plaintext; the token when encrypted.
    pub(crate) value: String,
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

/// What sits at a path: the MAC covers this so that structure changes are detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Object,
    Array,
    Value,
    /// A dotenv value on an `export` line.
    Export,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Object => "object",
            Kind::Array => "array",
            Kind::Value => "value",
            Kind::Export => "export",
        }
    }
}

/// A path as the canonical compact JSON array of its segments, e.g. `["db","hosts",0]`.
///
/// This exact text is the AES-GCM additional data of the value and its sort key in the MAC,
/// so it must be byte-identical across implementations (see README "Paths").
pub(crate) fn path_json(path: &[Segment]) -> String {
    let mut out = String::from("[");
    for (i, seg) in path.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match seg {
            Segment::Key(k) => format::json::write_string(&mut out, k),
            Segment::Index(n) => out.push_str(&n.to_string()),
        }
    }
    out.push(']');
    out
}

/// A path for people: `db.password`, `hosts[0]`, and keys that would be ambiguous in that
/// form as JSON strings (`"a.b".c`).
pub(crate) fn path_display(path: &[Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Index(n) => out.push_str(&format!("[{n}]")),
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let plain = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '/' | ':' | '@'));
                if plain {
                    out.push_str(k);
                } else {
                    format::json::write_string(&mut out, k);
                }
            }
        }
    }
    out
}

/// One node met while walking a document: what the MAC and the merge look at.
pub(crate) struct Visit<'a> {
    pub(crate) path: Vec<Segment>,
    pub(crate) kind: Kind,
    /// The leaf string for values, `None` for containers.
    pub(crate) leaf: Option<&'a str>,
}

impl Document {
    /// Parses a plaintext or encrypted document of the given format.
    ///
    /// `file` is used only in error messages. An encrypted file parses too (its metadata is
    /// then a normal key or comment); use [`crate::EncryptedDocument::parse`] for those.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] with a line number, never with the offending text.
    pub fn parse(text: &str, format: Format, file: &str) -> Result<Document, Error> {
        let body = match format {
            Format::Json => Body::Json(format::json::parse_document(text, file)?),
            Format::Dotenv => Body::Dotenv(format::dotenv::parse(text, file)?),
        };
        Ok(Document { body })
    }

    /// An empty document: `{}` or an empty dotenv file.
    pub fn empty(format: Format) -> Document {
        let body = match format {
            Format::Json => Body::Json(Vec::new()),
            Format::Dotenv => Body::Dotenv(Vec::new()),
        };
        Document { body }
    }

    /// The document's format.
    pub fn format(&self) -> Format {
        match self.body {
            Body::Json(_) => Format::Json,
            Body::Dotenv(_) => Format::Dotenv,
        }
    }

    /// Writes the document as text: JSON indented by two spaces, dotenv line by line; both
    /// end with a newline.
    pub fn to_text(&self) -> String {
        match &self.body {
            Body::Json(members) => format::json::write_document(members),
            Body::Dotenv(lines) => format::dotenv::write(lines),
        }
    }

    /// The number of leaf values.
    pub fn len(&self) -> usize {
        let mut n = 0;
        self.walk(|v| {
            if v.leaf.is_some() {
                n += 1;
            }
        });
        n
    }

    /// Whether the document has no leaf values at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` for every node below the root, in document order.
    pub(crate) fn walk<'a>(&'a self, mut f: impl FnMut(Visit<'a>)) {
        match &self.body {
            Body::Json(members) => {
                let mut path = Vec::new();
                walk_members(members, &mut path, &mut f);
            }
            Body::Dotenv(lines) => {
                for line in lines {
                    if let Line::Entry(e) = line {
                        f(Visit {
                            path: vec![Segment::Key(e.key.clone())],
                            kind: if e.export { Kind::Export } else { Kind::Value },
                            leaf: Some(&e.value),
                        });
                    }
                }
            }
        }
    }

    /// Replaces every leaf string in document order, stopping at the first error.
    pub(crate) fn try_map_leaves<E>(
        &mut self,
        mut f: impl FnMut(&[Segment], &str) -> Result<String, E>,
    ) -> Result<(), E> {
        match &mut self.body {
            Body::Json(members) => {
                let mut path = Vec::new();
                map_members(members, &mut path, &mut f)
            }
            Body::Dotenv(lines) => {
                for line in lines {
                    if let Line::Entry(e) = line {
                        let path = [Segment::Key(e.key.clone())];
                        e.value = f(&path, &e.value)?;
                    }
                }
                Ok(())
            }
        }
    }
}

fn walk_members<'a>(
    members: &'a [(String, Node)],
    path: &mut Vec<Segment>,
    f: &mut impl FnMut(Visit<'a>),
) {
    for (key, node) in members {
        path.push(Segment::Key(key.clone()));
        walk_node(node, path, f);
        path.pop();
    }
}

fn walk_node<'a>(node: &'a Node, path: &mut Vec<Segment>, f: &mut impl FnMut(Visit<'a>)) {
    match node {
        Node::Leaf(s) => f(Visit {
            path: path.clone(),
            kind: Kind::Value,
            leaf: Some(s),
        }),
        Node::Object(members) => {
            f(Visit {
                path: path.clone(),
                kind: Kind::Object,
                leaf: None,
            });
            walk_members(members, path, f);
        }
        Node::Array(items) => {
            f(Visit {
                path: path.clone(),
                kind: Kind::Array,
                leaf: None,
            });
            for (i, item) in items.iter().enumerate() {
                path.push(Segment::Index(i));
                walk_node(item, path, f);
                path.pop();
            }
        }
    }
}

fn map_members<E>(
    members: &mut [(String, Node)],
    path: &mut Vec<Segment>,
    f: &mut impl FnMut(&[Segment], &str) -> Result<String, E>,
) -> Result<(), E> {
    for (key, node) in members {
        path.push(Segment::Key(key.clone()));
        map_node(node, path, f)?;
        path.pop();
    }
    Ok(())
}

fn map_node<E>(
    node: &mut Node,
    path: &mut Vec<Segment>,
    f: &mut impl FnMut(&[Segment], &str) -> Result<String, E>,
) -> Result<(), E> {
    match node {
        Node::Leaf(s) => *s = f(path, s)?,
        Node::Object(members) => map_members(members, path, f)?,
        Node::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(Segment::Index(i));
                map_node(item, path, f)?;
                path.pop();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_canonical_json_arrays() {
        let p = [
            Segment::Key("db".into()),
            Segment::Key("a\"b\n".into()),
            Segment::Index(3),
        ];
        assert_eq!(path_json(&p), r#"["db","a\"b\n",3]"#);
        assert_eq!(path_display(&p), r#"db."a\"b\n"[3]"#);
        assert_eq!(path_json(&[]), "[]");
    }

    #[test]
    fn walks_every_node_in_order() {
        let doc = Document::parse(r#"{"a":{"b":[1,{}]},"c":"x"}"#, Format::Json, "t").unwrap();
        let mut seen = Vec::new();
        doc.walk(|v| seen.push(format!("{} {}", path_json(&v.path), v.kind.as_str())));
        assert_eq!(
            seen,
            [
                r#"["a"] object"#,
                r#"["a","b"] array"#,
                r#"["a","b",0] value"#,
                r#"["a","b",1] object"#,
                r#"["c"] value"#
            ]
        );
        assert_eq!(doc.len(), 2);
    }
}
