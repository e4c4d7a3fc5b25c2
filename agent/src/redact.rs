//! Hiding credentials that URLs carry (`https://deploy:ghp_…@host/repo.git`,
//! `…?access_token=…`) before text leaves the agent: the `log` topic, the status `error`,
//! the deploy log files, `state.json` and the agent's own log.
//!
//! `git` echoes the URL it was given in its messages, so the agent cannot rely on only its
//! own strings being clean: every line of command output and every error goes through
//! [`redact`] on its way out.

use std::borrow::Cow;

/// What replaces a hidden credential.
const HIDDEN: &str = "***";

/// `text` with the userinfo (`user:password@`) and the query values of every `scheme://`
/// URL in it replaced by `***`.
///
/// A URL ends at whitespace or a quote, as git and curl print them. The user name goes too:
/// a token is often given as the user (`https://ghp_…@github.com/…`).
pub(crate) fn redact(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after.find(ends_url).unwrap_or(after.len());
        let (url, tail) = after.split_at(end);
        let clean = redact_after_scheme(url);
        changed |= clean != url;
        out.push_str(&clean);
        rest = tail;
    }
    out.push_str(rest);
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

fn ends_url(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\'' | '"' | '<' | '>' | '`')
}

/// `user:pw@host/path?a=1#f` (the part after `scheme://`) without its secrets.
fn redact_after_scheme(url: &str) -> String {
    let authority_end = url.find(['/', '?', '#']).unwrap_or(url.len());
    let (authority, path) = url.split_at(authority_end);
    let mut out = String::with_capacity(url.len());
    match authority.rfind('@') {
        Some(at) => {
            out.push_str(HIDDEN);
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    match path.split_once('?') {
        None => out.push_str(path),
        Some((before, query)) => {
            out.push_str(before);
            out.push('?');
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((name, _)) => format!("{name}={HIDDEN}"),
                    None if param.is_empty() => String::new(),
                    None => HIDDEN.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
            if let Some(f) = fragment {
                out.push('#');
                out.push_str(f);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_userinfo_and_query_values() {
        let cases = [
            (
                "fatal: unable to access 'https://deploy:ghp_abc@github.com/o/r.git/': 403",
                "fatal: unable to access 'https://***@github.com/o/r.git/': 403",
            ),
            ("https://ghp_abc@host/r.git", "https://***@host/r.git"),
            (
                "git fetch http://h:1/r.git?access_token=s3cr3t&x=1#top sha",
                "git fetch http://h:1/r.git?access_token=***&x=***#top sha",
            ),
            (
                "ssh://git:pw@h:22/r \"https://h/?tok\"",
                "ssh://***@h:22/r \"https://h/?***\"",
            ),
        ];
        for (given, want) in cases {
            assert_eq!(redact(given), want, "{given}");
        }
    }

    #[test]
    fn leaves_clean_text_alone() {
        for clean in [
            "no url here",
            "git@github.com:octo-org/web.git",
            "https://github.com/octo-org/web.git",
            "see http://127.0.0.1:3000/health and ://odd",
            "",
        ] {
            assert!(matches!(redact(clean), Cow::Borrowed(_)), "{clean}");
            assert_eq!(redact(clean), clean);
        }
    }
}
