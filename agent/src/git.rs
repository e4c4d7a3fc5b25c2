//! The bare cache `{root}/repo.git` and checkouts from it, through the `git` CLI so that
//! users' SSH config, keys and credential helpers work as they do for them.
//!
//! Fetched commits get a ref under `refs/orcastrate/` so `git gc` never prunes a sha the
//! agent may need again (for an ancestry check or a rebuild).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use orcastrate_broker::Step;
use tokio_util::sync::CancellationToken;

use crate::state::SharedState;
use crate::steps::{self, Cmd, Sink, StepError};

/// Refs that keep fetched commits alive.
const REF_PREFIX: &str = "refs/orcastrate/";

/// Waits between the tries of a fetch from the remote: 3 tries, 1 s and 2 s apart.
const FETCH_BACKOFF: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(2)];

/// The bare cache of the service's repository.
#[derive(Debug, Clone)]
pub(crate) struct Git {
    cache: PathBuf,
    url: String,
    /// Working directory of git commands (the agent's root).
    root: PathBuf,
}

impl Git {
    pub(crate) fn new(cache: &Path, url: &str, root: &Path) -> Self {
        Self {
            cache: cache.to_path_buf(),
            url: url.to_owned(),
            root: root.to_path_buf(),
        }
    }

    fn cmd<I, S>(&self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut all = vec!["--git-dir".to_owned(), self.cache.display().to_string()];
        all.extend(args.into_iter().map(Into::into));
        Cmd {
            program: "git".into(),
            args: all,
            dir: self.root.clone(),
            // Never wait for a password prompt nobody can answer.
            extra_env: vec![
                ("GIT_TERMINAL_PROMPT".into(), "0".into()),
                ("GIT_ASKPASS".into(), "true".into()),
            ],
        }
    }

    /// Whether the cache holds commit `sha`.
    pub(crate) async fn has_commit(&self, sha: &str) -> bool {
        if !self.cache.join("HEAD").exists() {
            return false;
        }
        let cmd = self.cmd(["cat-file", "-e", &format!("{sha}^{{commit}}")]);
        matches!(steps::output(&cmd).await, Ok((status, _)) if status.success())
    }

    /// Makes sure commit `sha` is in the cache, fetching it from `git_url` if needed.
    ///
    /// # Errors
    ///
    /// When git fails, is cancelled, or the remote does not have the commit.
    pub(crate) async fn fetch(
        &self,
        sha: &str,
        sink: &Arc<Sink>,
        state: &SharedState,
        cancel: &CancellationToken,
    ) -> Result<(), FetchError> {
        if !self.cache.join("HEAD").exists() {
            let init = Cmd {
                program: "git".into(),
                args: vec![
                    "init".into(),
                    "--bare".into(),
                    "-q".into(),
                    self.cache.display().to_string(),
                ],
                dir: self.root.clone(),
                extra_env: vec![],
            };
            steps::run(&init, Step::Fetch, sink, state, cancel).await?;
        }
        if !self.has_commit(sha).await {
            self.fetch_with_retries(sha, sink, state, cancel).await?;
        }
        let keep = self.cmd(["update-ref", &format!("{REF_PREFIX}{sha}"), sha]);
        steps::run(&keep, Step::Fetch, sink, state, cancel).await?;
        Ok(())
    }

    /// Fetches `sha` from the remote, trying [`FETCH_BACKOFF`]`.len() + 1` times with those
    /// waits in between (a network hiccup or a host restarting should not fail a deploy).
    async fn fetch_with_retries(
        &self,
        sha: &str,
        sink: &Arc<Sink>,
        state: &SharedState,
        cancel: &CancellationToken,
    ) -> Result<(), FetchError> {
        let attempts = FETCH_BACKOFF.len() + 1;
        for attempt in 1..=attempts {
            let _ = sink.take_first_error();
            sink.note(
                Some(Step::Fetch),
                &format!(
                    "fetching {sha} from {} (attempt {attempt} of {attempts})",
                    self.url
                ),
            );
            let error = match self.fetch_once(sha, sink, state, cancel).await {
                Ok(()) => return Ok(()),
                Err(FetchError::Step(StepError::Cancelled)) => {
                    return Err(StepError::Cancelled.into())
                }
                Err(e) => e,
            };
            let reason = match &error {
                FetchError::Step(e) => sink
                    .take_first_error()
                    .map_or_else(|| e.to_string(), |git| format!("{e}: {git}")),
                other => other.to_string(),
            };
            let Some(wait) = FETCH_BACKOFF.get(attempt - 1) else {
                return Err(match error {
                    // The remote answered: its own message says it best.
                    FetchError::Missing { .. } => error,
                    _ => FetchError::GaveUp {
                        sha: sha.to_owned(),
                        url: self.url.clone(),
                        attempts,
                        reason,
                    },
                });
            };
            sink.note(
                Some(Step::Fetch),
                &format!(
                    "fetch attempt {attempt} of {attempts} failed: {reason}; retrying in {} s",
                    wait.as_secs()
                ),
            );
            tokio::select! {
                () = tokio::time::sleep(*wait) => {}
                () = cancel.cancelled() => return Err(StepError::Cancelled.into()),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// One try: by sha, then every branch; the commit must be in the cache afterwards.
    async fn fetch_once(
        &self,
        sha: &str,
        sink: &Arc<Sink>,
        state: &SharedState,
        cancel: &CancellationToken,
    ) -> Result<(), FetchError> {
        // Most servers (GitHub included) serve any reachable commit by its sha; older ones
        // only serve what a ref points to, so fall back to fetching every branch.
        let by_sha = self.cmd([
            "fetch",
            "--no-tags",
            "--no-write-fetch-head",
            &self.url,
            sha,
        ]);
        if let Err(e) = steps::run(&by_sha, Step::Fetch, sink, state, cancel).await {
            if matches!(e, StepError::Cancelled) {
                return Err(e.into());
            }
            sink.note(
                Some(Step::Fetch),
                "fetching by sha failed; fetching all branches instead",
            );
            let all = self.cmd([
                "fetch",
                "--no-tags",
                "--no-write-fetch-head",
                &self.url,
                "+refs/heads/*:refs/orcastrate-branches/*",
            ]);
            steps::run(&all, Step::Fetch, sink, state, cancel).await?;
        }
        if self.has_commit(sha).await {
            Ok(())
        } else {
            Err(FetchError::Missing {
                sha: sha.to_owned(),
                url: self.url.clone(),
            })
        }
    }

    /// Writes the tree of `sha` into `dest` (which must exist), without a `.git`.
    ///
    /// # Errors
    ///
    /// When git fails or is cancelled.
    pub(crate) async fn checkout(
        &self,
        sha: &str,
        dest: &Path,
        index_file: &Path,
        sink: &Arc<Sink>,
        state: &SharedState,
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        // A private index file: the cache's own index is never touched, and nothing is left
        // in the release but the files of the commit.
        let index = (
            "GIT_INDEX_FILE".to_owned(),
            index_file.display().to_string(),
        );
        let mut read_tree = self.cmd(["read-tree", sha]);
        read_tree.extra_env.push(index.clone());
        let mut checkout = self.cmd([
            "--work-tree".to_owned(),
            dest.display().to_string(),
            "checkout-index".to_owned(),
            "-a".to_owned(),
            "-f".to_owned(),
        ]);
        checkout.extra_env.push(index);
        let result = async {
            steps::run(&read_tree, Step::Fetch, sink, state, cancel).await?;
            steps::run(&checkout, Step::Fetch, sink, state, cancel).await
        }
        .await;
        let _ = std::fs::remove_file(index_file);
        result
    }

    /// Whether `ancestor` is an ancestor of (or equal to) `descendant`; `None` when git
    /// cannot tell (a commit missing from the cache).
    pub(crate) async fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Option<bool> {
        let cmd = self.cmd(["merge-base", "--is-ancestor", ancestor, descendant]);
        match steps::output(&cmd).await {
            Ok((status, _)) => match status.code() {
                Some(0) => Some(true),
                Some(1) => Some(false),
                _ => None,
            },
            Err(_) => None,
        }
    }

    /// Deletes the keep-refs of commits not in `keep`.
    pub(crate) async fn forget_except(&self, keep: &[&str]) {
        if !self.cache.join("HEAD").exists() {
            return;
        }
        let list = self.cmd(["for-each-ref", "--format=%(refname)", REF_PREFIX]);
        let Ok((status, out)) = steps::output(&list).await else {
            return;
        };
        if !status.success() {
            return;
        }
        for refname in out.lines() {
            let sha = refname.trim_start_matches(REF_PREFIX);
            if !keep.contains(&sha) {
                let _ = steps::output(&self.cmd(["update-ref", "-d", refname])).await;
            }
        }
    }
}

/// Why the code of an order could not be fetched.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error(transparent)]
    Step(#[from] StepError),
    #[error("commit {sha} is not in {url}: was it pushed? (check git_url and the machine's git credentials)")]
    Missing { sha: String, url: String },
    #[error("cannot fetch {sha} from {url}: {attempts} attempts failed, the last with: {reason} (check git_url, the network and this machine's git credentials)")]
    GaveUp {
        sha: String,
        url: String,
        attempts: usize,
        reason: String,
    },
}
