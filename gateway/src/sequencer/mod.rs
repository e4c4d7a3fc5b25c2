//! The sequencer: the one task that decides, numbers, commits and publishes orders.
//!
//! Every ledger write goes through it. It takes whatever commands are queued, runs them in one
//! SQLite transaction (one fsync for the group), then publishes the new orders in `seq`
//! order and only then answers. Being the single writer is the per-repo/env lock of the
//! design: `seq` is assigned, committed and published with no interleaving, so the retained
//! order is always the ledger's newest.
//!
//! Each command is a type in its own file (implementing `Command` of `command.rs`: its apply and
//! its reply type); this file only queues, batches, commits and answers them, and rolls
//! back the savepoint of any command that failed.

mod agents;
mod check;
mod command;
mod feed;
mod history;
mod order;
mod pause;
mod rollout;
mod status;
mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use orcastrate_broker::{AgentStatus, DeployOrder, OrderKind, OrderSigner, Topics};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::bus::Bus;
use crate::config::Access;
use crate::ledger::{self, StoredOrder};
use crate::metrics::Metrics;
use crate::rollout::{store, Rollout};
use command::{Command, Ctx, Job, Pending, Staged};

pub use feed::{Event, FeedView};
pub use history::OrderEntry;
pub use webhook::{Webhook, WebhookOutcome};

/// Commands taken into one transaction at most; bounds the latency of the first one.
const MAX_BATCH: usize = 512;

/// Capacity of the command queue; senders wait when it is full (back-pressure on webhooks).
const QUEUE: usize = 4096;

/// Newest order of each repo/env, as published (shared with the desired-topic guard and fleet).
pub type NewestOrders = Arc<RwLock<HashMap<(String, String), StoredOrder>>>;

/// Newest rollout of each repo/env, for the fleet summaries, and which of them changed since
/// the fleet last asked.
type Rollouts = Arc<RwLock<RolloutViews>>;

#[derive(Default)]
struct RolloutViews {
    newest: HashMap<(String, String), Rollout>,
    changed: std::collections::HashSet<(String, String)>,
}

/// How often running rollouts are looked at without a new status: their hold and wave
/// timers count in seconds.
const ROLLOUT_TICK: Duration = Duration::from_secs(1);

/// Least time between two looks at running rollouts: a burst of thousands of statuses costs
/// a few looks (each reads the repo/env's statuses), not one per status.
const ROLLOUT_TICK_GAP: Duration = Duration::from_millis(20);

/// Why a command was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum DeskError {
    #[error("unknown repo/env {repo}/{env}: add it to [[repos]] branches")]
    UnknownRepoEnv { repo: String, env: String },
    #[error("no rollback target for {repo}/{env}: {why}")]
    NoRollbackTarget {
        repo: String,
        env: String,
        why: String,
    },
    #[error("{repo}/{env}: {why}")]
    NoRollout {
        repo: String,
        env: String,
        why: String,
    },
    #[error("the ledger failed: {0}")]
    Internal(String),
    #[error("the gateway is shutting down")]
    Stopped,
}

/// A queued command of any kind.
type Queued = Box<dyn Job>;

/// A cheap handle for sending commands to the sequencer.
#[derive(Clone)]
pub struct Sequencer {
    tx: mpsc::Sender<Queued>,
    /// Woken by each recorded status: the rollout ticker then looks at running rollouts.
    statuses: Arc<Notify>,
    rollouts: Rollouts,
    changes: watch::Receiver<u64>,
}

impl Sequencer {
    /// Bumped after each committed batch that may have changed the ledger (see
    /// [`command::Command::WRITES`]): the board's streams read it again only then.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Queues `cmd` and waits for its answer, given once its transaction committed.
    async fn ask<C: Command>(&self, cmd: C) -> Result<C::Reply, DeskError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Box::new(Pending::new(cmd, Some(reply))))
            .await
            .map_err(|_| DeskError::Stopped)?;
        rx.await.map_err(|_| DeskError::Stopped)?
    }

    /// Decides a verified webhook; returns once the decision is durable and any order published.
    pub async fn webhook(&self, webhook: Webhook) -> Result<WebhookOutcome, DeskError> {
        self.ask(webhook).await
    }

    /// A new `manual` order: in the waves of the repo/env's rollout table, or with `now`
    /// to every agent at once (`deploy --now`).
    pub async fn deploy(
        &self,
        repo: String,
        env: String,
        sha: String,
        git_ref: Option<String>,
        issued_by: String,
        now: bool,
    ) -> Result<DeployOrder, DeskError> {
        self.ask(order::Order {
            repo,
            env,
            sha: Some(sha),
            git_ref,
            kind: OrderKind::Manual,
            issued_by,
            now,
        })
        .await
    }

    /// A new `rollback` order to `to`, or to the default target.
    pub async fn rollback(
        &self,
        repo: String,
        env: String,
        to: Option<String>,
        issued_by: String,
    ) -> Result<DeployOrder, DeskError> {
        self.ask(order::Order {
            repo,
            env,
            sha: to,
            git_ref: None,
            kind: OrderKind::Rollback,
            issued_by,
            now: true,
        })
        .await
    }

    /// Pauses or resumes a repo/env.
    pub async fn pause(&self, repo: String, env: String, paused: bool) -> Result<(), DeskError> {
        self.ask(pause::Pause { repo, env, paused }).await
    }

    /// Records a verified status (fire and forget: statuses are re-sent on every change).
    pub fn record_status(&self, status: AgentStatus, payload: String) {
        let job = Box::new(Pending::new(status::Status { status, payload }, None));
        if self.tx.try_send(job).is_err() {
            tracing::warn!("sequencer queue full: a status was not recorded in the ledger");
        }
        self.statuses.notify_one();
    }

    /// Rollouts newest first.
    pub async fn rollouts(
        &self,
        repo: Option<String>,
        env: Option<String>,
        limit: u32,
    ) -> Result<Vec<Rollout>, DeskError> {
        self.ask(rollout::List { repo, env, limit }).await
    }

    /// Promotes (the next wave now) or aborts (reverts) the running rollout of a repo/env.
    pub async fn steer_rollout(
        &self,
        repo: String,
        env: String,
        abort: bool,
        by: String,
    ) -> Result<Rollout, DeskError> {
        self.ask(rollout::Steer {
            repo,
            env,
            abort,
            by,
        })
        .await
    }

    /// The newest rollout of a repo/env, as the last batch left it.
    pub fn rollout_view(&self, repo: &str, env: &str) -> Option<Rollout> {
        self.rollouts
            .read()
            .expect("rollouts lock poisoned")
            .newest
            .get(&(repo.to_owned(), env.to_owned()))
            .cloned()
    }

    /// The repo/envs whose rollout changed since the last call (their fleet summaries are
    /// due again).
    pub fn take_changed_rollouts(&self) -> Vec<(String, String)> {
        let mut views = self.rollouts.write().expect("rollouts lock poisoned");
        views.changed.drain().collect()
    }

    /// Orders newest first.
    pub async fn history(
        &self,
        repo: Option<String>,
        env: Option<String>,
        limit: u32,
    ) -> Result<Vec<history::OrderEntry>, DeskError> {
        self.ask(history::History { repo, env, limit }).await
    }

    /// Latest verified status of every agent.
    pub async fn agents(
        &self,
        repo: Option<String>,
        env: Option<String>,
    ) -> Result<Vec<AgentStatus>, DeskError> {
        self.ask(agents::Agents { repo, env }).await
    }

    /// The newest `limit` webhook decisions and the paused repo/envs (for the board).
    pub async fn feed(&self, limit: u32) -> Result<FeedView, DeskError> {
        self.ask(feed::Feed { limit }).await
    }

    /// Runs a trivial query through the ledger (for `/healthz`).
    pub async fn check(&self) -> Result<(), DeskError> {
        self.ask(check::Check).await
    }
}

/// Everything the sequencer task owns.
pub struct SequencerTask {
    conn: Option<Connection>,
    signer: Arc<OrderSigner>,
    bus: Bus,
    topics: Topics,
    access: Arc<RwLock<Access>>,
    newest: NewestOrders,
    rollouts: Rollouts,
    metrics: Arc<Metrics>,
    /// See [`Ctx::outbox`].
    outbox: bool,
    changes: watch::Sender<u64>,
}

/// What one batch produced.
#[derive(Default)]
struct BatchResult {
    done: Vec<Queued>,
    staged: Staged,
}

impl SequencerTask {
    /// Prepares the sequencer; `newest` is filled from the ledger. `outbox`: whether a
    /// delivery destination is configured (outbox facts are written only then).
    pub fn new(
        conn: Connection,
        signer: Arc<OrderSigner>,
        bus: Bus,
        access: Arc<RwLock<Access>>,
        metrics: Arc<Metrics>,
        outbox: bool,
    ) -> Result<(Self, NewestOrders), ledger::LedgerError> {
        let newest: HashMap<_, _> = ledger::all_newest(&conn)?
            .into_iter()
            .map(|o| ((o.order.repo.clone(), o.order.env.clone()), o))
            .collect();
        let newest = Arc::new(RwLock::new(newest));
        let rollouts = RolloutViews {
            newest: store::all_latest(&conn)?
                .into_iter()
                .map(|r| ((r.repo.clone(), r.env.clone()), r))
                .collect(),
            changed: std::collections::HashSet::new(),
        };
        let topics = bus.topics().clone();
        Ok((
            Self {
                conn: Some(conn),
                signer,
                bus,
                topics,
                access,
                newest: newest.clone(),
                rollouts: Arc::new(RwLock::new(rollouts)),
                metrics,
                outbox,
                changes: watch::Sender::new(0),
            },
            newest,
        ))
    }

    /// Starts the task; it ends when every [`Sequencer`] handle is dropped and the queue is
    /// drained. A ticker beside it moves running rollouts on after each recorded status and
    /// every [`ROLLOUT_TICK`]; it holds no handle, so it ends with the sequencer.
    pub fn spawn(self) -> (Sequencer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let statuses = Arc::new(Notify::new());
        tokio::spawn(tick_rollouts(tx.downgrade(), statuses.clone()));
        let rollouts = self.rollouts.clone();
        let changes = self.changes.subscribe();
        let handle = tokio::spawn(self.run(rx));
        (
            Sequencer {
                tx,
                statuses,
                rollouts,
                changes,
            },
            handle,
        )
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Queued>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let mut conn = self
                .conn
                .take()
                .expect("the connection is returned after each batch");
            let signer = self.signer.clone();
            // Read under the lock only where a command needs it: cloning every client per
            // group would cost more than the group's work.
            let access = self.access.clone();
            let topics = self.topics.clone();
            let outbox = self.outbox;
            let writes = batch.iter().any(|job| job.writes());
            let started = Instant::now();
            let joined = tokio::task::spawn_blocking(move || {
                let result = process(&mut conn, &signer, &access, &topics, outbox, batch);
                (conn, result)
            })
            .await;
            let (conn, result) = match joined {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "sequencer batch panicked; the gateway stops taking orders");
                    return;
                }
            };
            self.metrics
                .ledger_commit_seconds
                .observe(started.elapsed().as_secs_f64());
            self.conn = Some(conn);
            if writes || !result.staged.rollouts.is_empty() || !result.staged.publish.is_empty() {
                self.changes.send_modify(|n| *n = n.wrapping_add(1));
            }
            if !result.staged.rollouts.is_empty() {
                let mut views = self.rollouts.write().expect("rollouts lock poisoned");
                for r in result.staged.rollouts {
                    let key = (r.repo.clone(), r.env.clone());
                    views.changed.insert(key.clone());
                    views.newest.insert(key, r);
                }
            }
            if !result.staged.new_orders.is_empty() {
                let mut newest = self.newest.write().expect("newest-orders lock poisoned");
                for o in result.staged.new_orders {
                    self.metrics.order(o.order.kind);
                    crate::decisions::order(&o.order);
                    newest.insert((o.order.repo.clone(), o.order.env.clone()), o);
                }
            }
            // Only the newest order of each repo/env in this group is published: the
            // retained message is all that counts, and the older ones are superseded.
            let mut last_order = HashMap::new();
            for (i, p) in result.staged.publish.iter().enumerate() {
                if p.retain {
                    last_order.insert(p.topic.clone(), i);
                }
            }
            for (i, p) in result.staged.publish.into_iter().enumerate() {
                if !p.retain {
                    self.bus.publish(&p.topic, p.payload, false).await;
                } else if last_order.get(&p.topic) == Some(&i) {
                    self.bus.publish_order(&p.topic, || Some(p.payload)).await;
                }
            }
            for job in result.done {
                job.answer();
            }
        }
    }
}

/// Asks the sequencer to look at running rollouts after each burst of statuses, and once a
/// [`ROLLOUT_TICK`] for their timers, until the sequencer is gone.
async fn tick_rollouts(tx: mpsc::WeakSender<Queued>, statuses: Arc<Notify>) {
    loop {
        let _ = tokio::time::timeout(ROLLOUT_TICK, statuses.notified()).await;
        let Some(tx) = tx.upgrade() else { return };
        let (reply, rx) = oneshot::channel();
        if tx
            .send(Box::new(Pending::new(rollout::Tick, Some(reply))))
            .await
            .is_err()
        {
            return;
        }
        drop(tx);
        if let Ok(Err(e)) = rx.await {
            tracing::warn!(error = %e, "rollouts not moved on; trying again");
        }
        tokio::time::sleep(ROLLOUT_TICK_GAP).await;
    }
}

/// Runs a batch in one transaction, each command under its own savepoint: a command that
/// fails is rolled back here, whatever the command, and the rest of the batch stands.
fn process(
    conn: &mut Connection,
    signer: &OrderSigner,
    access: &RwLock<Access>,
    topics: &Topics,
    outbox: bool,
    batch: Vec<Queued>,
) -> BatchResult {
    let mut out = BatchResult::default();
    let mut tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => {
            tracing::error!(error = %e, "cannot begin a ledger transaction");
            return fail_all(batch, &e.to_string());
        }
    };
    for mut job in batch {
        let mut sp = match tx.savepoint() {
            Ok(sp) => sp,
            Err(e) => {
                job.fail(&e.to_string());
                out.done.push(job);
                continue;
            }
        };
        let cx = Ctx {
            conn: &sp,
            signer,
            access,
            topics,
            outbox,
        };
        let mut staged = Staged::default();
        if !job.apply(&cx, &mut staged) {
            // Undo this command's writes; the rest of the batch stands.
            let _ = sp.rollback();
        } else if let Err(e) = sp.commit() {
            job.fail(&e.to_string());
        } else {
            out.staged.extend(staged);
        }
        out.done.push(job);
    }
    if let Err(e) = tx.commit() {
        tracing::error!(error = %e, "ledger commit failed; nothing in this batch was accepted");
        return fail_all(out.done, &e.to_string());
    }
    out
}

/// Fails every command of a batch that did not commit.
fn fail_all(mut batch: Vec<Queued>, msg: &str) -> BatchResult {
    for job in &mut batch {
        job.fail(msg);
    }
    BatchResult {
        done: batch,
        ..BatchResult::default()
    }
}

#[cfg(test)]
mod tests {
    use super::command::{
        internal,
        testing::{temp_ledger, Parts},
    };
    use super::*;

    /// Pauses `acme/web/prod`, then fails if `fail`: whatever the command, a failure must
    /// undo its writes.
    struct PauseThen {
        fail: bool,
    }

    impl Command for PauseThen {
        type Reply = ();

        fn apply(self, cx: &Ctx<'_>, _out: &mut Staged) -> Result<(), DeskError> {
            ledger::set_paused(cx.conn, "acme/web", "prod", true).map_err(internal)?;
            if self.fail {
                return Err(DeskError::Internal("failed after writing".into()));
            }
            Ok(())
        }
    }

    fn run(conn: &mut Connection, fail: bool) -> Result<(), DeskError> {
        let parts = Parts::new();
        let (reply, mut rx) = oneshot::channel();
        let job: Queued = Box::new(Pending::new(PauseThen { fail }, Some(reply)));
        let out = process(
            conn,
            &parts.signer,
            &parts.access,
            &parts.topics,
            true,
            vec![job],
        );
        for job in out.done {
            job.answer();
        }
        rx.try_recv().unwrap()
    }

    #[test]
    fn a_failed_command_is_rolled_back_and_a_good_one_kept() {
        let (_dir, mut conn) = temp_ledger();
        assert!(run(&mut conn, true).is_err());
        assert!(!ledger::is_paused(&conn, "acme/web", "prod").unwrap());
        run(&mut conn, false).unwrap();
        assert!(ledger::is_paused(&conn, "acme/web", "prod").unwrap());
    }
}
