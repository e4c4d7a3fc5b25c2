//! Turning a decrypted document into environment variables, for `exec` and the agent.
//!
//! Dotenv entries map one to one, with values read as Node's dotenv reads them. JSON is
//! flattened: nested keys are joined with `__` (the separator nconf and ASP.NET use, since
//! `.` and `:` are not portable in variable names), array items by their index, so
//! `{"db": {"hosts": ["a"]}}` gives `db__hosts__0=a`. Strings are passed without quotes,
//! numbers as written, booleans as `true`/`false`, and `null` as the empty string; empty
//! objects and arrays give nothing.

use std::collections::HashMap;

use crate::document::{Body, Line, Segment};
use crate::format::{dotenv, json};
use crate::{Document, Error};

/// The separator between the keys of a nested JSON path in a variable name.
pub const SEPARATOR: &str = "__";

/// The variables a document defines, in document order.
///
/// # Errors
///
/// [`Error::Usage`] if two keys give the same variable name, or a name or value cannot be
/// an environment variable (empty name, `=` in the name, or a NUL byte). Messages name the
/// variable, never its value.
pub fn env_vars(doc: &Document, file: &str) -> Result<Vec<(String, String)>, Error> {
    let mut vars = Vec::new();
    match &doc.body {
        Body::Dotenv(lines) => {
            for line in lines {
                if let Line::Entry(e) = line {
                    vars.push((e.key.clone(), dotenv::value(&e.value)));
                }
            }
        }
        Body::Json(_) => doc.walk(|v| {
            if let Some(leaf) = v.leaf {
                let name = v
                    .path
                    .iter()
                    .map(|s| match s {
                        Segment::Key(k) => k.clone(),
                        Segment::Index(i) => i.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(SEPARATOR);
                let value = if leaf.starts_with('"') {
                    json::decode_string(leaf).unwrap_or_default()
                } else if leaf == "null" {
                    String::new()
                } else {
                    leaf.to_owned()
                };
                vars.push((name, value));
            }
        }),
    }
    let mut seen = HashMap::new();
    for (name, value) in &vars {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(Error::Usage(format!(
                "{file}: key {name:?} cannot be an environment variable name (empty, or contains '=' or NUL)"
            )));
        }
        if value.contains('\0') {
            return Err(Error::Usage(format!(
                "{file}: the value of {name} contains a NUL byte, which environment variables cannot hold"
            )));
        }
        if seen.insert(name.as_str(), ()).is_some() {
            return Err(Error::Usage(format!(
                "{file}: two keys give the environment variable {name}"
            )));
        }
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Format;

    #[test]
    fn flattens_json() {
        let doc = Document::parse(
            r#"{"PORT": 3000, "db": {"hosts": ["a", "b"], "tls": true}, "n": null, "e": {}, "s": "x\ny"}"#,
            Format::Json,
            "f",
        )
        .unwrap();
        let vars = env_vars(&doc, "f").unwrap();
        let got: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            got,
            [
                "PORT=3000",
                "db__hosts__0=a",
                "db__hosts__1=b",
                "db__tls=true",
                "n=",
                "s=x\ny"
            ]
        );
    }

    #[test]
    fn reads_dotenv_values() {
        let doc = Document::parse("A=\"x y\"\nexport B=2 # c\n", Format::Dotenv, "f").unwrap();
        assert_eq!(
            env_vars(&doc, "f").unwrap(),
            [
                ("A".to_owned(), "x y".to_owned()),
                ("B".to_owned(), "2".to_owned())
            ]
        );
    }

    #[test]
    fn refuses_collisions_without_values() {
        let doc = Document::parse(
            r#"{"a__b": "s3cret", "a": {"b": "s3cret"}}"#,
            Format::Json,
            "f",
        )
        .unwrap();
        let err = env_vars(&doc, "f").unwrap_err().to_string();
        assert!(err.contains("a__b") && !err.contains("s3cret"), "{err}");
    }
}
