//! Validation of the names that make up topics and signatures.
//!
//! Every value is checked where it enters (webhook, config, API, CLI), so everything after
//! can format topics and canonical strings without escaping.

/// A value that may not be used as the named field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} {value:?}: {reason}")]
pub struct NameError {
    /// The field name as users know it (`repo`, `env`, `agent`, `sha`, ...).
    pub field: &'static str,
    /// The offending value, shortened for display.
    pub value: String,
    /// What a valid value looks like.
    pub reason: &'static str,
}

impl NameError {
    fn new(field: &'static str, value: &str, reason: &'static str) -> Self {
        let value: String = value.chars().take(80).collect();
        Self {
            field,
            value,
            reason,
        }
    }
}

const ENV_RULE: &str =
    "use lowercase letters, digits, '_' and '-', starting with a letter or digit";
const REPO_RULE: &str = "use the GitHub full name \"owner/name\" (letters, digits, '.', '_', '-')";

fn is_slug(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Checks an environment name: `[a-z0-9][a-z0-9_-]*`.
pub fn env(value: &str) -> Result<&str, NameError> {
    validate_slug("env", value)
}

/// Checks an agent (client) name: `[a-z0-9][a-z0-9_-]*`.
pub fn agent(value: &str) -> Result<&str, NameError> {
    validate_slug("agent", value)
}

/// Checks a slug-shaped value for the named field.
pub fn validate_slug<'a>(field: &'static str, value: &'a str) -> Result<&'a str, NameError> {
    if value.len() > 64 {
        return Err(NameError::new(field, value, "at most 64 characters"));
    }
    if is_slug(value) {
        Ok(value)
    } else {
        Err(NameError::new(field, value, ENV_RULE))
    }
}

/// Lowercases and checks a GitHub repository full name (`owner/name`).
///
/// GitHub names are case-insensitive; lowercasing where they enter makes topics and
/// signatures agree whatever case a webhook or a config file used.
pub fn repo(value: &str) -> Result<String, NameError> {
    let lower = value.trim().to_ascii_lowercase();
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 100
            && p != "."
            && p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    match lower.split_once('/') {
        Some((owner, name)) if part_ok(owner) && part_ok(name) => Ok(lower),
        _ => Err(NameError::new("repo", value, REPO_RULE)),
    }
}

/// Checks a commit sha: exactly 40 lowercase hex digits.
pub fn sha(value: &str) -> Result<&str, NameError> {
    if value.len() == 40
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(value)
    } else {
        Err(NameError::new(
            "sha",
            value,
            "a full commit sha is 40 lowercase hex digits",
        ))
    }
}

/// Checks free text that goes into a canonical string (`ref`, `issued_by`, ...): no newline.
pub fn single_line<'a>(field: &'static str, value: &'a str) -> Result<&'a str, NameError> {
    if value.contains(['\n', '\r']) {
        Err(NameError::new(field, value, "must not contain a newline"))
    } else if value.len() > 256 {
        Err(NameError::new(field, value, "at most 256 characters"))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_is_lowercased_and_checked() {
        assert_eq!(repo("Octo-Org/Web.JS").unwrap(), "octo-org/web.js");
        for bad in [
            "octo",
            "/web",
            "octo/",
            "a/b/c",
            "octo/we b",
            "octo/+",
            "octo/#",
            "../x",
        ] {
            assert!(repo(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn env_and_agent_are_slugs() {
        assert!(env("production").is_ok());
        assert!(env("web_1-a").is_ok());
        for bad in ["", "Prod", "-x", "a.b", "a/b", "a+", "a#", "a b", "a\nb"] {
            assert!(env(bad).is_err(), "{bad:?} should be refused");
        }
        let err = agent("Web.1").unwrap_err();
        assert_eq!(err.field, "agent");
        assert!(err.to_string().contains("invalid agent"));
    }

    #[test]
    fn sha_is_40_lower_hex() {
        assert!(sha(&"a".repeat(40)).is_ok());
        assert!(sha(&"A".repeat(40)).is_err());
        assert!(sha(&"a".repeat(39)).is_err());
        assert!(sha("zz").is_err());
    }

    #[test]
    fn single_line_refuses_newlines() {
        assert!(single_line("ref", "refs/heads/main").is_ok());
        assert!(single_line("ref", "refs/heads/main\nx").is_err());
    }
}
