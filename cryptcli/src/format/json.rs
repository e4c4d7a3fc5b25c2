//! A small JSON reader and writer that keeps key order and number text.
//!
//! `serde_json` would sort keys unless its `preserve_order` feature were turned on, and
//! features unify across the workspace, so that would change every other crate's JSON. It
//! would also reformat numbers (`1.50` → `1.5`). This module does exactly what the format
//! needs: object members in file order, numbers kept as written, duplicate keys refused,
//! strings written in one canonical form, and error messages with a line and column but
//! never the offending text (it may be a secret).

use crate::document::Node;
use crate::Error;

/// Deeper nesting than this is refused instead of risking the stack; real configs nest a
/// handful of levels.
const MAX_DEPTH: usize = 128;

/// Parses a JSON document whose root must be an object.
pub(crate) fn parse_document(text: &str, file: &str) -> Result<Vec<(String, Node)>, Error> {
    let mut p = Parser {
        src: text.as_bytes(),
        pos: 0,
        file,
        depth: 0,
    };
    if p.src.starts_with("\u{feff}".as_bytes()) {
        p.pos = 3;
    }
    p.skip_ws();
    if p.peek() != Some(b'{') {
        return Err(if p.peek().is_none() {
            Error::malformed(file, "empty file: expected a JSON object")
        } else {
            p.error("the top level must be a JSON object")
        });
    }
    let members = match p.value()? {
        Node::Object(members) => members,
        _ => unreachable!("checked for an opening brace"),
    };
    p.skip_ws();
    if p.pos != p.src.len() {
        return Err(p.error("unexpected text after the top-level object"));
    }
    Ok(members)
}

/// Parses the text of one scalar (as stored inside an encrypted value) and returns its
/// canonical form, or `None` if it is not exactly one JSON scalar.
pub(crate) fn canonical_scalar(text: &str) -> Option<String> {
    let mut p = Parser {
        src: text.as_bytes(),
        pos: 0,
        file: "",
        depth: 0,
    };
    match p.value() {
        Ok(Node::Leaf(s)) if p.pos == p.src.len() => Some(s),
        _ => None,
    }
}

/// Decodes a canonical JSON string literal (as found in a leaf) to its text.
pub(crate) fn decode_string(literal: &str) -> Option<String> {
    let mut p = Parser {
        src: literal.as_bytes(),
        pos: 0,
        file: "",
        depth: 0,
    };
    let s = p.string().ok()?;
    (p.pos == p.src.len()).then_some(s)
}

/// Writes a document: two-space indentation, `"key": value`, a final newline.
pub(crate) fn write_document(members: &[(String, Node)]) -> String {
    let mut out = String::with_capacity(64 * members.len() + 4);
    write_object(&mut out, members, 0);
    out.push('\n');
    out
}

/// Appends `s` as a JSON string literal in canonical form: only `"`, `\` and control
/// characters are escaped (as `\b \t \n \f \r` or `\u00xx`); everything else is kept as
/// UTF-8. Paths and plaintext strings use this form, so it is part of the format.
pub(crate) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_object(out: &mut String, members: &[(String, Node)], indent: usize) {
    if members.is_empty() {
        out.push_str("{}");
        return;
    }
    out.push_str("{\n");
    for (i, (key, node)) in members.iter().enumerate() {
        push_indent(out, indent + 1);
        write_string(out, key);
        out.push_str(": ");
        write_node(out, node, indent + 1);
        if i + 1 < members.len() {
            out.push(',');
        }
        out.push('\n');
    }
    push_indent(out, indent);
    out.push('}');
}

fn write_node(out: &mut String, node: &Node, indent: usize) {
    match node {
        Node::Leaf(text) => out.push_str(text),
        Node::Object(members) => write_object(out, members, indent),
        Node::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                push_indent(out, indent + 1);
                write_node(out, item, indent + 1);
                if i + 1 < items.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            push_indent(out, indent);
            out.push(']');
        }
    }
}

fn push_indent(out: &mut String, indent: usize) {
    for _ in 0..indent {
        out.push_str("  ");
    }
}

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    file: &'a str,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// An error at the current position: line and column, never the text there.
    fn error(&self, what: &str) -> Error {
        let before = &self.src[..self.pos.min(self.src.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count()
            + 1;
        if self.pos >= self.src.len() {
            Error::malformed(
                self.file,
                format!("line {line}: unexpected end of file (truncated?): {what}"),
            )
        } else {
            Error::malformed(self.file, format!("line {line} column {column}: {what}"))
        }
    }

    fn expect(&mut self, byte: u8, what: &str) -> Result<(), Error> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn value(&mut self) -> Result<Node, Error> {
        self.skip_ws();
        match self.peek() {
            Some(b'{') => self.nested(|p| p.object().map(Node::Object)),
            Some(b'[') => self.nested(|p| p.array().map(Node::Array)),
            Some(b'"') => {
                let s = self.string()?;
                let mut out = String::with_capacity(s.len() + 2);
                write_string(&mut out, &s);
                Ok(Node::Leaf(out))
            }
            Some(b'-' | b'0'..=b'9') => self.number().map(Node::Leaf),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            _ => Err(self.error("expected a JSON value")),
        }
    }

    fn nested(&mut self, f: impl FnOnce(&mut Self) -> Result<Node, Error>) -> Result<Node, Error> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(&format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let node = f(self);
        self.depth -= 1;
        node
    }

    fn object(&mut self) -> Result<Vec<(String, Node)>, Error> {
        self.expect(b'{', "expected '{'")?;
        let mut members: Vec<(String, Node)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(members);
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a string key"));
            }
            let key_pos = self.pos;
            let key = self.string()?;
            if !seen.insert(key.clone()) {
                self.pos = key_pos;
                let mut shown = String::new();
                write_string(&mut shown, &key);
                return Err(self.error(&format!("duplicate key {shown}")));
            }
            self.skip_ws();
            self.expect(b':', "expected ':' after the key")?;
            let value = self.value()?;
            members.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(members);
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self) -> Result<Vec<Node>, Error> {
        self.expect(b'[', "expected '['")?;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(items);
        }
        loop {
            items.push(self.value()?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(items);
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    fn literal(&mut self, word: &str) -> Result<Node, Error> {
        if self.src[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(Node::Leaf(word.to_owned()))
        } else {
            Err(self.error("expected a JSON value"))
        }
    }

    fn number(&mut self) -> Result<String, Error> {
        let start = self.pos;
        let digits = |p: &mut Self| {
            let from = p.pos;
            while let Some(b'0'..=b'9') = p.peek() {
                p.pos += 1;
            }
            p.pos > from
        };
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        if self.peek() == Some(b'0') {
            self.pos += 1;
        } else if !digits(self) {
            return Err(self.error("invalid number"));
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !digits(self) {
                return Err(self.error("invalid number: expected digits after '.'"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !digits(self) {
                return Err(self.error("invalid number: expected digits in the exponent"));
            }
        }
        // The slice is ASCII, so this cannot fail.
        Ok(String::from_utf8_lossy(&self.src[start..self.pos]).into_owned())
    }

    fn string(&mut self) -> Result<String, Error> {
        self.expect(b'"', "expected a string")?;
        let mut out = Vec::new();
        loop {
            let start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.extend_from_slice(&self.src[start..self.pos]);
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    // Input is a &str and we only split at ASCII bytes, so this is UTF-8.
                    return String::from_utf8(out)
                        .map_err(|_| self.error("invalid UTF-8 in a string"));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = self.escape()?;
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                Some(_) => return Err(self.error("control character in a string (use an escape)")),
            }
        }
    }

    fn escape(&mut self) -> Result<char, Error> {
        let b = self
            .peek()
            .ok_or_else(|| self.error("unterminated escape"))?;
        self.pos += 1;
        Ok(match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = self.hex4()?;
                if (0xD800..0xDC00).contains(&hi) {
                    if self.src[self.pos..].starts_with(b"\\u") {
                        self.pos += 2;
                        let lo = self.hex4()?;
                        if (0xDC00..0xE000).contains(&lo) {
                            let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                            return char::from_u32(c).ok_or_else(|| self.error("invalid escape"));
                        }
                    }
                    return Err(self.error("unpaired surrogate in a \\u escape"));
                }
                char::from_u32(hi)
                    .ok_or_else(|| self.error("unpaired surrogate in a \\u escape"))?
            }
            _ => {
                self.pos -= 1;
                return Err(self.error("invalid escape"));
            }
        })
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let digits = self
            .src
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.error("truncated \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| self.error("invalid \\u escape"))?;
        let value = u32::from_str_radix(text, 16).map_err(|_| self.error("invalid \\u escape"))?;
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(self.error("invalid \\u escape"));
        }
        self.pos += 4;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(text: &str) -> String {
        write_document(&parse_document(text, "t").unwrap())
    }

    #[test]
    fn keeps_order_numbers_and_nesting() {
        let text = r#"{"z": 1.50, "a": {"y": [true, null, -0.1e+5], "x": {}}, "e": []}"#;
        assert_eq!(
            roundtrip(text),
            "{\n  \"z\": 1.50,\n  \"a\": {\n    \"y\": [\n      true,\n      null,\n      -0.1e+5\n    ],\n    \"x\": {}\n  },\n  \"e\": []\n}\n"
        );
    }

    #[test]
    fn canonicalizes_strings() {
        let text = r#"{"k\u00e9": "a\/b\u0001\ud83d\ude00\t"}"#;
        assert_eq!(roundtrip(text), "{\n  \"ké\": \"a/b\\u0001😀\\t\"\n}\n");
        assert_eq!(canonical_scalar(r#""\u0041""#).unwrap(), r#""A""#);
        assert_eq!(decode_string(r#""a\nb""#).unwrap(), "a\nb");
        assert!(canonical_scalar("1 2").is_none());
    }

    #[test]
    fn errors_give_position_not_content() {
        let err = parse_document("{\n  \"a\": \"s3cret\" \"b\"\n}", "f.json").unwrap_err();
        let msg = err.to_string();
        assert_eq!(msg, "f.json: line 2 column 17: expected ',' or '}'");
        let err = parse_document("{\"a\": \"s3cret", "f.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = parse_document("{\"a\": 1, \"a\": 2}", "f")
            .unwrap_err()
            .to_string();
        assert!(err.contains("duplicate key \"a\""), "{err}");
        assert!(parse_document("[1]", "f").is_err());
        assert!(parse_document("", "f")
            .unwrap_err()
            .to_string()
            .contains("empty file"));
        assert!(parse_document("{\"a\": 01}", "f").is_err());
        assert!(parse_document("{\"a\": \"\\ud800\"}", "f").is_err());
        assert!(parse_document("{} x", "f").is_err());
    }

    #[test]
    fn refuses_deep_nesting() {
        let text = format!("{{\"a\": {}{}}}", "[".repeat(200), "]".repeat(200));
        let err = parse_document(&text, "f").unwrap_err().to_string();
        assert!(err.contains("nested deeper"), "{err}");
    }
}
