//! `state.json`: what the agent must remember across a crash or reboot.
//!
//! The floor (newest `seq` started), the order in progress and how often it was tried, the
//! releases that passed their health check, the app's process group and start time, and the
//! outcome last reported. Written atomically (temp file, fsync, rename, fsync of the
//! directory) after every change, so a `kill -9` at any point leaves the old or the new file.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use orcastrate_broker::{AgentState, DeployOrder};
use serde::{Deserialize, Serialize};

/// How many healthy releases are remembered (only the newest few are rollback targets).
const HEALTHY_HISTORY: usize = 50;

/// An order that was started and has not finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pending {
    pub(crate) order: DeployOrder,
    /// How many times it was started (1 on the first try; retried once after a restart).
    pub(crate) attempts: u32,
}

/// A release that passed its health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HealthyRelease {
    pub(crate) seq: u64,
    pub(crate) sha: String,
    pub(crate) release: String,
    pub(crate) at: String,
}

/// A process group the agent started and may need to adopt or kill after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcRecord {
    pub(crate) pgid: i32,
    /// From `/proc/{pid}/stat`, so a reused pid is not mistaken for ours.
    pub(crate) start_time: u64,
}

/// The app the agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AppRecord {
    pub(crate) proc: ProcRecord,
    pub(crate) release: String,
    /// Its private port behind `[proxy]`, for the proxy of a restarted agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) port: Option<u16>,
}

/// The outcome last reported, re-published after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LastOutcome {
    pub(crate) state: AgentState,
    pub(crate) seq: Option<u64>,
    pub(crate) sha: Option<String>,
    pub(crate) release: Option<String>,
    pub(crate) previous_sha: Option<String>,
    pub(crate) deploy_ms: Option<u64>,
    pub(crate) error: Option<String>,
}

/// The content of `state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct State {
    #[serde(default)]
    pub(crate) v: u32,
    /// The newest `seq` started, whatever the outcome.
    #[serde(default)]
    pub(crate) floor: Option<u64>,
    #[serde(default)]
    pub(crate) pending: Option<Pending>,
    /// Oldest first.
    #[serde(default)]
    pub(crate) healthy: Vec<HealthyRelease>,
    #[serde(default)]
    pub(crate) app: Option<AppRecord>,
    /// The step command running now, killed at start-up if a crash left it behind.
    #[serde(default)]
    pub(crate) step: Option<ProcRecord>,
    #[serde(default)]
    pub(crate) last: Option<LastOutcome>,
}

impl State {
    /// The newest release recorded healthy.
    pub(crate) fn newest_healthy(&self) -> Option<&HealthyRelease> {
        self.healthy.last()
    }

    /// Records a healthy release (moving it to the end if it was there already).
    pub(crate) fn push_healthy(&mut self, entry: HealthyRelease) {
        self.healthy.retain(|h| h.release != entry.release);
        self.healthy.push(entry);
        let excess = self.healthy.len().saturating_sub(HEALTHY_HISTORY);
        self.healthy.drain(..excess);
    }
}

/// `state.json` in memory and on disk.
#[derive(Debug)]
pub(crate) struct StateStore {
    path: PathBuf,
    state: State,
}

/// What loading found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Loaded {
    Found,
    Missing,
    /// Unreadable: moved aside to the given path.
    Corrupt(PathBuf, String),
}

/// `state.json` shared by the agent's tasks. Locked only for short, synchronous updates.
pub(crate) type SharedState = Arc<Mutex<StateStore>>;

impl StateStore {
    /// Loads `{root}/state.json`; a missing file is an empty state, a corrupt one is moved
    /// aside (and reported) so the agent can rebuild its floor from the release directories.
    pub(crate) fn load(root: &Path) -> (Self, Loaded) {
        let path = root.join("state.json");
        let (state, loaded) = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<State>(&bytes) {
                Ok(state) => (state, Loaded::Found),
                Err(e) => {
                    let aside = root.join(format!(
                        "state.json.corrupt-{}",
                        orcastrate_broker::time::unix_ms()
                    ));
                    let _ = std::fs::rename(&path, &aside);
                    (State::default(), Loaded::Corrupt(aside, e.to_string()))
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => (State::default(), Loaded::Missing),
            Err(e) => {
                let aside = root.join(format!(
                    "state.json.corrupt-{}",
                    orcastrate_broker::time::unix_ms()
                ));
                (State::default(), Loaded::Corrupt(aside, e.to_string()))
            }
        };
        (Self { path, state }, loaded)
    }

    /// The state as last written.
    pub(crate) fn get(&self) -> &State {
        &self.state
    }

    /// Applies `change` and writes the file atomically.
    ///
    /// # Errors
    ///
    /// When the file cannot be written; the change stays applied in memory.
    pub(crate) fn update<R>(&mut self, change: impl FnOnce(&mut State) -> R) -> io::Result<R> {
        let result = change(&mut self.state);
        self.state.v = 1;
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(io::Error::other)?;
        orcastrate_fs::write_private(&self.path, &bytes)?;
        Ok(result)
    }
}

/// Locks the shared state, recovering from a poisoned lock (the state is plain data).
pub(crate) fn lock(state: &SharedState) -> MutexGuard<'_, StateStore> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Applies a change and writes it, logging (not failing) when the disk refuses.
pub(crate) fn update<R>(state: &SharedState, change: impl FnOnce(&mut State) -> R) -> R {
    let mut store = lock(state);
    let mut out = None;
    if let Err(e) = store.update(|s| out = Some(change(s))) {
        tracing::error!(error = %e, "failed to write state.json");
    }
    out.expect("the change ran")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, loaded) = StateStore::load(dir.path());
        assert_eq!(loaded, Loaded::Missing);
        store
            .update(|s| {
                s.floor = Some(7);
                s.push_healthy(HealthyRelease {
                    seq: 7,
                    sha: "a".repeat(40),
                    release: "7-aaaaaaaaaaaa".into(),
                    at: "t".into(),
                });
            })
            .unwrap();
        let (store2, loaded) = StateStore::load(dir.path());
        assert_eq!(loaded, Loaded::Found);
        assert_eq!(store2.get(), store.get());
        assert_eq!(store2.get().newest_healthy().unwrap().seq, 7);

        std::fs::write(dir.path().join("state.json"), b"{not json").unwrap();
        let (store3, loaded) = StateStore::load(dir.path());
        assert!(matches!(loaded, Loaded::Corrupt(..)));
        assert_eq!(store3.get().floor, None);
        assert!(!dir.path().join("state.json").exists());
    }

    #[test]
    fn healthy_history_moves_and_is_bounded() {
        let mut s = State::default();
        for i in 0..60u64 {
            s.push_healthy(HealthyRelease {
                seq: i,
                sha: String::new(),
                release: format!("r{}", i % 55),
                at: String::new(),
            });
        }
        assert_eq!(s.healthy.len(), HEALTHY_HISTORY);
        assert_eq!(s.newest_healthy().unwrap().seq, 59);
    }
}
