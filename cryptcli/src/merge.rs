//! Three-way merge of decrypted documents, key by key, for the git merge driver.
//!
//! Git's line merge cannot merge encrypted files: every re-encryption changes the MAC line,
//! so two branches always conflict there. Merging the decrypted documents instead gives the
//! result a person expects: a key changed on one side takes that change, a key changed the
//! same way on both sides is fine, and only a key changed differently on both sides is a
//! conflict. Objects merge member by member; arrays and scalars are single values.

use std::collections::HashMap;

use crate::document::{path_display, Body, Entry, Line, Node, Segment};
use crate::{Document, Error};

/// Merges `ours` and `theirs` against their common ancestor `base` (`None` when the file
/// was added on both sides).
///
/// Member order follows `ours`, unless only `theirs` reordered, with keys added by the
/// other side appended. In dotenv files, comments and blank lines follow the same rule.
///
/// # Errors
///
/// [`Error::Conflict`] naming every key path both sides changed differently (never the
/// values); [`Error::Usage`] if the three documents are not of one format.
pub fn merge(
    base: Option<&Document>,
    ours: &Document,
    theirs: &Document,
    file: &str,
) -> Result<Document, Error> {
    let mut conflicts = Vec::new();
    let body = match (base.map(|b| &b.body), &ours.body, &theirs.body) {
        (None | Some(Body::Json(_)), Body::Json(o), Body::Json(t)) => {
            let b = match base.map(|b| &b.body) {
                Some(Body::Json(b)) => Some(b.as_slice()),
                _ => None,
            };
            let mut path = Vec::new();
            Body::Json(merge_members(b, o, t, &mut path, &mut conflicts))
        }
        (None | Some(Body::Dotenv(_)), Body::Dotenv(o), Body::Dotenv(t)) => {
            let b = match base.map(|b| &b.body) {
                Some(Body::Dotenv(b)) => b.as_slice(),
                _ => &[],
            };
            Body::Dotenv(merge_dotenv(b, o, t, &mut conflicts))
        }
        _ => {
            return Err(Error::Usage(format!(
                "{file}: cannot merge: the versions are not all of one format"
            )));
        }
    };
    if conflicts.is_empty() {
        Ok(Document { body })
    } else {
        Err(Error::Conflict {
            file: file.to_owned(),
            paths: conflicts,
        })
    }
}

/// The classic three-way rule for one value; `Err(())` is a conflict.
fn pick<'a, T: PartialEq>(
    base: Option<&'a T>,
    ours: Option<&'a T>,
    theirs: Option<&'a T>,
) -> Result<Option<&'a T>, ()> {
    if ours == theirs || base == theirs {
        Ok(ours)
    } else if base == ours {
        Ok(theirs)
    } else {
        Err(())
    }
}

/// The key order of a merged object or file: theirs if only theirs changed the order,
/// otherwise ours, with the other side's new keys appended in their order.
fn key_order<'a>(base: Option<&[&'a str]>, ours: &[&'a str], theirs: &[&'a str]) -> Vec<&'a str> {
    let (first, second) = if base == Some(ours) {
        (theirs, ours)
    } else {
        (ours, theirs)
    };
    let mut order: Vec<&str> = first.to_vec();
    for k in second {
        if !order.contains(k) {
            order.push(k);
        }
    }
    order
}

fn merge_members(
    base: Option<&[(String, Node)]>,
    ours: &[(String, Node)],
    theirs: &[(String, Node)],
    path: &mut Vec<Segment>,
    conflicts: &mut Vec<String>,
) -> Vec<(String, Node)> {
    let base_keys = base.map(keys);
    let order = key_order(base_keys.as_deref(), &keys(ours), &keys(theirs));
    let mut merged = Vec::with_capacity(order.len());
    for key in order {
        path.push(Segment::Key(key.to_owned()));
        let node = merge_node(
            get(base, key),
            get(Some(ours), key),
            get(Some(theirs), key),
            path,
            conflicts,
        );
        path.pop();
        if let Some(node) = node {
            merged.push((key.to_owned(), node));
        }
    }
    merged
}

fn keys(members: &[(String, Node)]) -> Vec<&str> {
    members.iter().map(|(k, _)| k.as_str()).collect()
}

fn get<'a>(members: Option<&'a [(String, Node)]>, key: &str) -> Option<&'a Node> {
    members.and_then(|m| m.iter().find(|(k, _)| k == key).map(|(_, n)| n))
}

fn merge_node(
    base: Option<&Node>,
    ours: Option<&Node>,
    theirs: Option<&Node>,
    path: &mut Vec<Segment>,
    conflicts: &mut Vec<String>,
) -> Option<Node> {
    if let Ok(picked) = pick(base, ours, theirs) {
        return picked.cloned();
    }
    if let (Some(Node::Object(o)), Some(Node::Object(t))) = (ours, theirs) {
        let b = match base {
            Some(Node::Object(b)) => Some(b.as_slice()),
            None => None,
            // The base was not an object: both sides made it one; merge as if added.
            Some(_) => None,
        };
        return Some(Node::Object(merge_members(b, o, t, path, conflicts)));
    }
    conflicts.push(path_display(path));
    ours.cloned()
}

fn merge_dotenv(
    base: &[Line],
    ours: &[Line],
    theirs: &[Line],
    conflicts: &mut Vec<String>,
) -> Vec<Line> {
    let entries = |lines: &[Line]| -> HashMap<String, Entry> {
        lines
            .iter()
            .filter_map(|l| match l {
                Line::Entry(e) => Some((e.key.clone(), e.clone())),
                Line::Text(_) => None,
            })
            .collect()
    };
    let (b, o, t) = (entries(base), entries(ours), entries(theirs));
    // The layout (comments, blank lines and key order) merges like key order does.
    let layout = if skeleton(base) == skeleton(ours) && !base.is_empty() {
        theirs
    } else {
        ours
    };
    let mut merged: HashMap<&str, Option<Entry>> = HashMap::new();
    let mut keys: Vec<&str> = Vec::new();
    for lines in [layout, ours, theirs] {
        for line in lines {
            if let Line::Entry(e) = line {
                if !keys.contains(&e.key.as_str()) {
                    keys.push(&e.key);
                }
            }
        }
    }
    for key in &keys {
        match pick(b.get(*key), o.get(*key), t.get(*key)) {
            Ok(entry) => {
                merged.insert(key, entry.cloned());
            }
            Err(()) => {
                conflicts.push(path_display(&[Segment::Key((*key).to_owned())]));
                merged.insert(key, o.get(*key).cloned());
            }
        }
    }
    let mut out = Vec::with_capacity(layout.len());
    for line in layout {
        match line {
            Line::Text(_) => out.push(line.clone()),
            Line::Entry(e) => {
                if let Some(Some(entry)) = merged.remove(e.key.as_str()) {
                    out.push(Line::Entry(entry));
                }
            }
        }
    }
    for key in keys {
        if let Some(Some(entry)) = merged.remove(key) {
            out.push(Line::Entry(entry));
        }
    }
    out
}

/// A dotenv file without its values: what the layout rule compares.
fn skeleton(lines: &[Line]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| match l {
            Line::Text(t) => t.as_str(),
            Line::Entry(e) => e.key.as_str(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Format;

    fn json(text: &str) -> Document {
        Document::parse(text, Format::Json, "t").unwrap()
    }

    fn dotenv(text: &str) -> Document {
        Document::parse(text, Format::Dotenv, "t").unwrap()
    }

    #[test]
    fn merges_changes_to_different_keys() {
        let base = json(r#"{"a": 1, "db": {"user": "u", "pass": "p"}, "gone": 0}"#);
        let ours = json(r#"{"a": 2, "db": {"user": "u", "pass": "p"}, "gone": 0, "new1": 1}"#);
        let theirs = json(r#"{"a": 1, "db": {"user": "u", "pass": "q"}, "new2": 2}"#);
        let merged = merge(Some(&base), &ours, &theirs, "f").unwrap();
        assert_eq!(
            merged,
            json(r#"{"a": 2, "db": {"user": "u", "pass": "q"}, "new1": 1, "new2": 2}"#)
        );
    }

    #[test]
    fn reports_conflicting_keys_without_values() {
        let base = json(r#"{"db": {"pass": "p"}, "x": [1]}"#);
        let ours = json(r#"{"db": {"pass": "s3cret-ours"}, "x": [2]}"#);
        let theirs = json(r#"{"db": {"pass": "s3cret-theirs"}, "x": [3]}"#);
        let err = merge(Some(&base), &ours, &theirs, "f.json").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("db.pass, x"), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn same_change_on_both_sides_and_no_base() {
        let ours = json(r#"{"a": 1, "b": 2}"#);
        let theirs = json(r#"{"b": 2, "a": 1, "c": 3}"#);
        let merged = merge(None, &ours, &theirs, "f").unwrap();
        assert_eq!(
            merged.to_text(),
            json(r#"{"a": 1, "b": 2, "c": 3}"#).to_text()
        );
    }

    #[test]
    fn dotenv_merges_keys_and_keeps_comments() {
        let base = dotenv("# db\nA=1\nB=2\n");
        let ours = dotenv("# db\nA=10\nB=2\n");
        let theirs = dotenv("# database settings\nA=1\nB=2\nC=3\n");
        let merged = merge(Some(&base), &ours, &theirs, "f").unwrap();
        assert_eq!(merged.to_text(), "# database settings\nA=10\nB=2\nC=3\n");
        let err = merge(Some(&base), &dotenv("A=5\n"), &dotenv("A=6\n"), "f").unwrap_err();
        assert!(err.to_string().contains("changed A differently"), "{err}");
    }
}
