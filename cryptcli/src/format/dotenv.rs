//! Reading and writing dotenv files the way Node's `dotenv` package reads them.
//!
//! Each `[export ]KEY=value` line is one entry whose raw right-hand side (quotes and any
//! trailing comment included) is what gets encrypted, so a decrypted file comes back line
//! for line as it was written. Comments and blank lines are kept in clear. A value in
//! double, single or back quotes may span several lines. [`value`] turns a raw right-hand
//! side into the string a program sees, for `exec`.

use std::collections::HashSet;

use crate::document::{Entry, Line};
use crate::Error;

/// Parses dotenv text into lines.
pub(crate) fn parse(text: &str, file: &str) -> Result<Vec<Line>, Error> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut raw: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    // A final newline leaves an empty last piece that is not a line of its own.
    if text.is_empty() || text.ends_with('\n') {
        raw.pop();
    }
    let mut lines = Vec::new();
    let mut seen = HashSet::new();
    let mut i = 0;
    while i < raw.len() {
        let line = raw[i];
        i += 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            lines.push(Line::Text(line.to_owned()));
            continue;
        }
        let start_line = i;
        let bad = |what: &str| Error::malformed(file, format!("line {start_line}: {what}"));
        let (export, key, rest) = split_assignment(line)
            .ok_or_else(|| bad("expected KEY=value, a comment or a blank line"))?;
        let mut value = rest.trim_start().to_owned();
        if let Some(quote) = value
            .chars()
            .next()
            .filter(|c| matches!(c, '"' | '\'' | '`'))
        {
            // A quoted value continues over following lines until its closing quote.
            while closing_quote(&value, quote).is_none() {
                let Some(next) = raw.get(i) else {
                    return Err(bad("unterminated quoted value (truncated?)"));
                };
                i += 1;
                value.push('\n');
                value.push_str(next);
            }
        }
        value.truncate(value.trim_end().len());
        if !seen.insert(key.to_owned()) {
            return Err(bad(&format!("duplicate key {key}")));
        }
        lines.push(Line::Entry(Entry {
            export,
            key: key.to_owned(),
            value,
        }));
    }
    Ok(lines)
}

/// Writes lines back as text, each ending with a newline.
pub(crate) fn write(lines: &[Line]) -> String {
    let mut out = String::new();
    for line in lines {
        match line {
            Line::Text(text) => out.push_str(text),
            Line::Entry(e) => {
                if e.export {
                    out.push_str("export ");
                }
                out.push_str(&e.key);
                out.push('=');
                out.push_str(&e.value);
            }
        }
        out.push('\n');
    }
    out
}

/// Whether `key` is a valid dotenv key: letters, digits, `_`, `.` and `-`, as Node's
/// dotenv accepts.
pub(crate) fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The value a program sees for a raw right-hand side, following Node's dotenv: quoted
/// values are taken between their quotes (double quotes expand `\n`, `\r`, `\t`, `\"` and
/// `\\`); unquoted values end at the first `#` and are trimmed.
pub(crate) fn value(raw: &str) -> String {
    let raw = raw.trim();
    if let Some(quote) = raw.chars().next().filter(|c| matches!(c, '"' | '\'' | '`')) {
        if let Some(end) = closing_quote(raw, quote) {
            let inner = &raw[1..end];
            if quote != '"' {
                return inner.to_owned();
            }
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c != '\\' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('r') => out.push('\r'),
                    Some('t') => out.push('\t'),
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some(other) => {
                        out.push('\\');
                        out.push(other);
                    }
                    None => out.push('\\'),
                }
            }
            return out;
        }
    }
    raw.split('#').next().unwrap_or_default().trim().to_owned()
}

/// Splits `[export ]KEY = rest` into its parts, or `None` if the line is not an assignment.
fn split_assignment(line: &str) -> Option<(bool, &str, &str)> {
    let mut s = line.trim_start();
    let mut export = false;
    if let Some(after) = s.strip_prefix("export") {
        if after.starts_with([' ', '\t']) {
            export = true;
            s = after.trim_start();
        }
    }
    let eq = s.find('=')?;
    let key = s[..eq].trim_end();
    is_valid_key(key).then_some((export, key, &s[eq + 1..]))
}

/// The byte index of the quote closing the value that starts with `quote`, skipping
/// backslash-escaped quotes.
fn closing_quote(value: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in value.char_indices().skip(1) {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == quote {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_writes_back_line_for_line() {
        let text =
            "# db\n\nexport DB_URL=postgres://x\nPASS=\"a b\" # note\nMULTI=\"one\ntwo\"\nEMPTY=\n";
        let lines = parse(text, "f").unwrap();
        assert_eq!(lines.len(), 6);
        assert_eq!(write(&lines), text);
        match &lines[4] {
            Line::Entry(e) => assert_eq!(e.value, "\"one\ntwo\""),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn normalizes_spacing_around_equals() {
        let lines = parse("  A = 1  \r\nB= 'x'", "f").unwrap();
        assert_eq!(write(&lines), "A=1\nB='x'\n");
    }

    #[test]
    fn values_follow_node_dotenv() {
        assert_eq!(value("plain # comment"), "plain");
        assert_eq!(value("a#b"), "a");
        assert_eq!(value("\"a\\nb \\\"q\\\"\" # c"), "a\nb \"q\"");
        assert_eq!(value("'a\\nb'"), "a\\nb");
        assert_eq!(value("`x`"), "x");
        assert_eq!(value(""), "");
    }

    #[test]
    fn errors_name_the_line_not_the_content() {
        let err = parse("A=1\nthis is s3cret\n", "f.env")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "f.env: line 2: expected KEY=value, a comment or a blank line"
        );
        let err = parse("A=1\nA=2\n", "f.env").unwrap_err().to_string();
        assert_eq!(err, "f.env: line 2: duplicate key A");
        let err = parse("A=\"s3cret\n", "f.env").unwrap_err().to_string();
        assert!(err.contains("unterminated"), "{err}");
        assert!(!err.contains("s3cret"));
    }
}
