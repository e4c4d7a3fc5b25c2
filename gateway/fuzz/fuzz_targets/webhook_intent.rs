//! Whatever a sender with the webhook secret puts in a body, `github::intent` answers with
//! an intent or an error, never a panic, and deploys only a mapped repo/env and a valid sha.
//!
//! Input: the first byte picks the `X-GitHub-Event`, the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orcastrate_gateway::config::{Access, RepoRoute};
use orcastrate_gateway::github::{intent, Intent};

const EVENTS: [&str; 5] = ["push", "pull_request", "ping", "issues", "workflow_run"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let access = Access {
        clients: Vec::new(),
        repos: vec![RepoRoute {
            name: "codertocat/hello-world".into(),
            branches: [("master".to_owned(), "production".to_owned())].into(),
            rollout: Default::default(),
        }],
    };
    let event = EVENTS[usize::from(pick) % EVENTS.len()];
    if let Ok(Intent::Deploy {
        repo,
        env,
        sha,
        git_ref,
        issued_by,
        ..
    }) = intent(event, body, &access)
    {
        assert_eq!(repo, "codertocat/hello-world");
        assert_eq!(env, "production");
        assert!(
            sha.len() == 40
                && sha
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert!(!git_ref.contains('\n') && !git_ref.contains('\r'));
        assert!(issued_by.is_none_or(|i| !i.contains('\n') && !i.contains('\r')));
    }
});
