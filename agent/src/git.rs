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

use crate::config::GitSettings;
use crate::state::SharedState;
use crate::status::StatusBoard;
use crate::steps::{self, Cmd, Sink, StepError};

/// Refs that keep fetched commits alive.
const REF_PREFIX: &str = "refs/orcastrate/";

/// First wait between two tries of a fetch; doubled after each failed try up to
/// [`FETCH_BACKOFF_MAX`].
const FETCH_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between two tries of a fetch.
const FETCH_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// An HTTP(S) transfer slower than this many bytes a second for [`LOW_SPEED_TIME_S`] is
/// aborted by git (`http.lowSpeedLimit`): a server that accepts and never answers would
/// otherwise hold a fetch for as long as TCP keeps the connection.
const LOW_SPEED_LIMIT: u32 = 1000;
/// See [`LOW_SPEED_LIMIT`] (`http.lowSpeedTime`).
const LOW_SPEED_TIME_S: u32 = 30;
/// SSH options for git's transport when the user set no `core.sshCommand`/`GIT_SSH_COMMAND`
/// of their own: never prompt (nobody can answer; an unknown host key or a locked key fails
/// at once), give up on a host that does not answer within 15 s, and on a connection whose
/// server stops answering keep-alives for 30 s.
const SSH_COMMAND: &str =
    "ssh -o BatchMode=yes -o ConnectTimeout=15 -o ServerAliveInterval=15 -o ServerAliveCountMax=2";

/// The bare cache of the service's repository.
#[derive(Debug, Clone)]
pub(crate) struct Git {
    cache: PathBuf,
    url: String,
    /// `url` as shown in messages: credentials it carries hidden.
    shown_url: String,
    /// Working directory of git commands (the agent's root).
    root: PathBuf,
    /// Longest one try of a fetch may take before its process group is killed.
    fetch_timeout: Duration,
    /// Tries of a fetch before the deploy fails.
    fetch_attempts: u32,
}

impl Git {
    pub(crate) fn new(cache: &Path, url: &str, root: &Path, settings: &GitSettings) -> Self {
        Self {
            cache: cache.to_path_buf(),
            url: url.to_owned(),
            shown_url: crate::redact::redact(url).into_owned(),
            root: root.to_path_buf(),
            fetch_timeout: settings.fetch_timeout,
            fetch_attempts: settings.fetch_attempts.max(1),
        }
    }

    /// The `-c` options and environment that bound a transfer's stalls, except where the
    /// user configured their own (in git's config or the agent's environment).
    async fn network_options(&self) -> (Vec<String>, Vec<(String, String)>) {
        let query = self.cmd([
            "config",
            "--get-regexp",
            r"^(core\.sshcommand|http\.lowspeedlimit|http\.lowspeedtime)$",
        ]);
        let user: Vec<String> = match steps::output(&query).await {
            Ok((_, out)) => out
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_ascii_lowercase)
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut config = Vec::new();
        if !user.iter().any(|k| k == "http.lowspeedlimit") {
            config.extend([
                "-c".to_owned(),
                format!("http.lowSpeedLimit={LOW_SPEED_LIMIT}"),
            ]);
        }
        if !user.iter().any(|k| k == "http.lowspeedtime") {
            config.extend([
                "-c".to_owned(),
                format!("http.lowSpeedTime={LOW_SPEED_TIME_S}"),
            ]);
        }
        let mut env = Vec::new();
        let own_ssh = user.iter().any(|k| k == "core.sshcommand")
            || std::env::var_os("GIT_SSH_COMMAND").is_some()
            || std::env::var_os("GIT_SSH").is_some();
        if !own_ssh {
            env.push(("GIT_SSH_COMMAND".to_owned(), SSH_COMMAND.to_owned()));
        }
        (config, env)
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
            // git runs as the agent: the credentials for git_url are the agent's.
            user: None,
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
        status: &StatusBoard,
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
                user: None,
            };
            steps::run(&init, Step::Fetch, sink, state, cancel).await?;
        }
        if !self.has_commit(sha).await {
            self.fetch_with_retries(sha, sink, state, status, cancel)
                .await?;
        }
        let keep = self.cmd(["update-ref", &format!("{REF_PREFIX}{sha}"), sha]);
        steps::run(&keep, Step::Fetch, sink, state, cancel).await?;
        Ok(())
    }

    /// Fetches `sha` from the remote, trying `fetch_attempts` times with growing waits in
    /// between (a network hiccup or a host restarting should not fail a deploy). Each try is
    /// killed after `fetch_timeout`. While it retries, the status `error` says
    /// `fetch: retrying (n/N): <reason>`.
    async fn fetch_with_retries(
        &self,
        sha: &str,
        sink: &Arc<Sink>,
        state: &SharedState,
        status: &StatusBoard,
        cancel: &CancellationToken,
    ) -> Result<(), FetchError> {
        let attempts = self.fetch_attempts;
        let network = self.network_options().await;
        let mut wait = FETCH_BACKOFF;
        for attempt in 1..=attempts {
            let _ = sink.take_first_error();
            sink.note(
                Some(Step::Fetch),
                &format!(
                    "fetching {sha} from {} (attempt {attempt} of {attempts})",
                    self.shown_url
                ),
            );
            let error = match self
                .fetch_deadline(sha, &network, sink, state, cancel)
                .await
            {
                Ok(()) => {
                    if attempt > 1 {
                        status.update(|s| s.error = None);
                    }
                    return Ok(());
                }
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
            if attempt == attempts {
                return Err(match error {
                    // The remote answered: its own message says it best.
                    FetchError::Missing { .. } => error,
                    _ => FetchError::GaveUp {
                        sha: sha.to_owned(),
                        url: self.shown_url.clone(),
                        attempts,
                        reason,
                    },
                });
            }
            sink.note(
                Some(Step::Fetch),
                &format!(
                    "fetch attempt {attempt} of {attempts} failed: {reason}; retrying in {} s",
                    wait.as_secs()
                ),
            );
            status.update(|s| {
                s.error = Some(format!(
                    "fetch: retrying ({}/{attempts}): {reason}",
                    attempt + 1
                ));
            });
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => return Err(StepError::Cancelled.into()),
            }
            wait = (wait * 2).min(FETCH_BACKOFF_MAX);
        }
        unreachable!("the last attempt returns")
    }

    /// One try, its git processes killed (by process group) once `fetch_timeout` passes.
    async fn fetch_deadline(
        &self,
        sha: &str,
        network: &(Vec<String>, Vec<(String, String)>),
        sink: &Arc<Sink>,
        state: &SharedState,
        cancel: &CancellationToken,
    ) -> Result<(), FetchError> {
        let attempt = cancel.child_token();
        // A timer that cancels the try, rather than a timeout around it: cancelling lets
        // the running step kill its process group and clean up before it returns.
        let timer = {
            let attempt = attempt.clone();
            let limit = self.fetch_timeout;
            tokio::spawn(async move {
                tokio::time::sleep(limit).await;
                attempt.cancel();
            })
        };
        let result = self.fetch_once(sha, network, sink, state, &attempt).await;
        timer.abort();
        match result {
            Err(FetchError::Step(StepError::Cancelled)) if !cancel.is_cancelled() => {
                Err(FetchError::TimedOut {
                    seconds: self.fetch_timeout.as_secs(),
                })
            }
            other => other,
        }
    }

    /// One try: by sha, then every branch; the commit must be in the cache afterwards.
    async fn fetch_once(
        &self,
        sha: &str,
        network: &(Vec<String>, Vec<(String, String)>),
        sink: &Arc<Sink>,
        state: &SharedState,
        cancel: &CancellationToken,
    ) -> Result<(), FetchError> {
        let (config, env) = network;
        let fetch = |refspec: &str| {
            let mut args = config.clone();
            args.extend(
                [
                    "fetch",
                    "--no-tags",
                    "--no-write-fetch-head",
                    &self.url,
                    refspec,
                ]
                .map(str::to_owned),
            );
            let mut cmd = self.cmd(args);
            cmd.extra_env.extend(env.iter().cloned());
            cmd
        };
        // Most servers (GitHub included) serve any reachable commit by its sha; older ones
        // only serve what a ref points to, so fall back to fetching every branch.
        if let Err(e) = steps::run(&fetch(sha), Step::Fetch, sink, state, cancel).await {
            if matches!(e, StepError::Cancelled) {
                return Err(e.into());
            }
            sink.note(
                Some(Step::Fetch),
                "fetching by sha failed; fetching all branches instead",
            );
            let all = fetch("+refs/heads/*:refs/orcastrate-branches/*");
            steps::run(&all, Step::Fetch, sink, state, cancel).await?;
        }
        if self.has_commit(sha).await {
            Ok(())
        } else {
            Err(FetchError::Missing {
                sha: sha.to_owned(),
                url: self.shown_url.clone(),
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
    #[error("git did not finish within {seconds} s ([git] fetch_timeout_s): the server accepted but did not answer, or the transfer stalled")]
    TimedOut { seconds: u64 },
    #[error("cannot fetch {sha} from {url}: {attempts} attempts failed, the last with: {reason} (check git_url, the network and this machine's git credentials)")]
    GaveUp {
        sha: String,
        url: String,
        attempts: u32,
        reason: String,
    },
}
