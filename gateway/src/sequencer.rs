//! The sequencer: the one task that decides, numbers, commits and publishes orders.
//!
//! Every ledger write goes through it. It takes whatever commands are queued, runs them in one
//! SQLite transaction (one fsync for the group), then publishes the new orders in `seq`
//! order and only then answers. Being the single writer is the per-repo/env lock of the
//! design: `seq` is assigned, committed and published with no interleaving, so the retained
//! order is always the ledger's newest.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use orcastrate_broker::{
    message::sha12, names, time, AgentStatus, DeployOrder, Event, EventOutcome, OrderKind,
    OrderSigner, Topics,
};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::bus::Bus;
use crate::config::Access;
use crate::github::Intent;
use crate::ledger::{self, DeliveryRecord, StoredOrder};
use crate::metrics::Metrics;

/// Commands taken into one transaction at most; bounds the latency of the first one.
const MAX_BATCH: usize = 512;

/// Capacity of the command queue; senders wait when it is full (back-pressure on webhooks).
const QUEUE: usize = 4096;

/// Newest order of each repo/env, as published (shared with the desired-topic guard and fleet).
pub type NewestOrders = Arc<RwLock<HashMap<(String, String), StoredOrder>>>;

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
    #[error("the ledger failed: {0}")]
    Internal(String),
    #[error("the gateway is shutting down")]
    Stopped,
}

/// What the gateway decided about a webhook.
#[derive(Debug, Clone)]
pub enum WebhookOutcome {
    Ping,
    /// Seen before: the same delivery id, or the same signed body under another id (a
    /// replay: the signature does not cover `X-GitHub-Delivery`). Says which.
    Duplicate(String),
    Ignored(String),
    Accepted(Box<DeployOrder>),
}

/// A webhook to decide.
#[derive(Debug)]
pub struct Webhook {
    pub delivery: String,
    pub event: String,
    /// SHA-256 (hex) of the signed body as received: a body is decided once, whatever its
    /// delivery id.
    pub body_sha256: String,
    pub intent: Intent,
}

enum Command {
    Webhook(Webhook, oneshot::Sender<Result<WebhookOutcome, DeskError>>),
    Order {
        repo: String,
        env: String,
        /// `None`: roll back to the default target.
        sha: Option<String>,
        git_ref: Option<String>,
        kind: OrderKind,
        issued_by: String,
        reply: oneshot::Sender<Result<DeployOrder, DeskError>>,
    },
    Pause {
        repo: String,
        env: String,
        paused: bool,
        reply: oneshot::Sender<Result<(), DeskError>>,
    },
    Status(AgentStatus, String),
    History {
        repo: Option<String>,
        env: Option<String>,
        limit: u32,
        reply: oneshot::Sender<Result<Vec<DeployOrder>, DeskError>>,
    },
    Agents {
        repo: Option<String>,
        env: Option<String>,
        reply: oneshot::Sender<Result<Vec<AgentStatus>, DeskError>>,
    },
    Check(oneshot::Sender<Result<(), DeskError>>),
}

/// A cheap handle for sending commands to the sequencer.
#[derive(Clone)]
pub struct Sequencer {
    tx: mpsc::Sender<Command>,
}

async fn ask<T>(
    tx: &mpsc::Sender<Command>,
    make: impl FnOnce(oneshot::Sender<Result<T, DeskError>>) -> Command,
) -> Result<T, DeskError> {
    let (reply, rx) = oneshot::channel();
    tx.send(make(reply)).await.map_err(|_| DeskError::Stopped)?;
    rx.await.map_err(|_| DeskError::Stopped)?
}

impl Sequencer {
    /// Decides a verified webhook; returns once the decision is durable and any order published.
    pub async fn webhook(&self, webhook: Webhook) -> Result<WebhookOutcome, DeskError> {
        ask(&self.tx, |r| Command::Webhook(webhook, r)).await
    }

    /// A new `manual` order.
    pub async fn deploy(
        &self,
        repo: String,
        env: String,
        sha: String,
        git_ref: Option<String>,
        issued_by: String,
    ) -> Result<DeployOrder, DeskError> {
        ask(&self.tx, |reply| Command::Order {
            repo,
            env,
            sha: Some(sha),
            git_ref,
            kind: OrderKind::Manual,
            issued_by,
            reply,
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
        ask(&self.tx, |reply| Command::Order {
            repo,
            env,
            sha: to,
            git_ref: None,
            kind: OrderKind::Rollback,
            issued_by,
            reply,
        })
        .await
    }

    /// Pauses or resumes a repo/env.
    pub async fn pause(&self, repo: String, env: String, paused: bool) -> Result<(), DeskError> {
        ask(&self.tx, |reply| Command::Pause {
            repo,
            env,
            paused,
            reply,
        })
        .await
    }

    /// Records a verified status (fire and forget: statuses are re-sent on every change).
    pub fn record_status(&self, status: AgentStatus, payload: String) {
        if self.tx.try_send(Command::Status(status, payload)).is_err() {
            tracing::warn!("sequencer queue full: a status was not recorded in the ledger");
        }
    }

    /// Orders newest first.
    pub async fn history(
        &self,
        repo: Option<String>,
        env: Option<String>,
        limit: u32,
    ) -> Result<Vec<DeployOrder>, DeskError> {
        ask(&self.tx, |reply| Command::History {
            repo,
            env,
            limit,
            reply,
        })
        .await
    }

    /// Latest verified status of every agent.
    pub async fn agents(
        &self,
        repo: Option<String>,
        env: Option<String>,
    ) -> Result<Vec<AgentStatus>, DeskError> {
        ask(&self.tx, |reply| Command::Agents { repo, env, reply }).await
    }

    /// Runs a trivial query through the ledger (for `/healthz`).
    pub async fn check(&self) -> Result<(), DeskError> {
        ask(&self.tx, Command::Check).await
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
    metrics: Arc<Metrics>,
}

/// Something to publish after the commit.
struct Publish {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

/// A command's answer, held back until its transaction committed.
enum Done {
    Webhook(
        oneshot::Sender<Result<WebhookOutcome, DeskError>>,
        Result<WebhookOutcome, DeskError>,
    ),
    Order(
        oneshot::Sender<Result<DeployOrder, DeskError>>,
        Result<DeployOrder, DeskError>,
    ),
    Unit(
        oneshot::Sender<Result<(), DeskError>>,
        Result<(), DeskError>,
    ),
    History(
        oneshot::Sender<Result<Vec<DeployOrder>, DeskError>>,
        Result<Vec<DeployOrder>, DeskError>,
    ),
    Agents(
        oneshot::Sender<Result<Vec<AgentStatus>, DeskError>>,
        Result<Vec<AgentStatus>, DeskError>,
    ),
    Nothing,
}

impl Done {
    fn fail(self, e: &str) -> Self {
        fn err<T>(e: &str) -> Result<T, DeskError> {
            Err(DeskError::Internal(e.to_owned()))
        }
        match self {
            Done::Webhook(r, _) => Done::Webhook(r, err(e)),
            Done::Order(r, _) => Done::Order(r, err(e)),
            Done::Unit(r, _) => Done::Unit(r, err(e)),
            Done::History(r, _) => Done::History(r, err(e)),
            Done::Agents(r, _) => Done::Agents(r, err(e)),
            Done::Nothing => Done::Nothing,
        }
    }

    fn send(self) {
        // A dropped receiver means the HTTP client went away; the decision stands.
        match self {
            Done::Webhook(r, v) => drop(r.send(v)),
            Done::Order(r, v) => drop(r.send(v)),
            Done::Unit(r, v) => drop(r.send(v)),
            Done::History(r, v) => drop(r.send(v)),
            Done::Agents(r, v) => drop(r.send(v)),
            Done::Nothing => {}
        }
    }
}

/// What one batch produced.
#[derive(Default)]
struct BatchResult {
    done: Vec<Done>,
    publish: Vec<Publish>,
    new_orders: Vec<StoredOrder>,
}

fn internal(e: impl std::fmt::Display) -> DeskError {
    DeskError::Internal(e.to_string())
}

impl SequencerTask {
    /// Prepares the sequencer; `newest` is filled from the ledger.
    pub fn new(
        conn: Connection,
        signer: Arc<OrderSigner>,
        bus: Bus,
        access: Arc<RwLock<Access>>,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, NewestOrders), ledger::LedgerError> {
        let newest: HashMap<_, _> = ledger::all_newest(&conn)?
            .into_iter()
            .map(|o| ((o.order.repo.clone(), o.order.env.clone()), o))
            .collect();
        let newest = Arc::new(RwLock::new(newest));
        let topics = bus.topics().clone();
        Ok((
            Self {
                conn: Some(conn),
                signer,
                bus,
                topics,
                access,
                newest: newest.clone(),
                metrics,
            },
            newest,
        ))
    }

    /// Starts the task; it ends when every [`Sequencer`] handle is dropped and the queue is drained.
    pub fn spawn(self) -> (Sequencer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let handle = tokio::spawn(self.run(rx));
        (Sequencer { tx }, handle)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
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
            let started = Instant::now();
            let joined = tokio::task::spawn_blocking(move || {
                let result = process(&mut conn, &signer, &access, &topics, batch);
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
            if !result.new_orders.is_empty() {
                let mut newest = self.newest.write().expect("newest-orders lock poisoned");
                for o in result.new_orders {
                    self.metrics.order(o.order.kind);
                    newest.insert((o.order.repo.clone(), o.order.env.clone()), o);
                }
            }
            // Only the newest order of each repo/env in this group is published: the
            // retained message is all that counts, and the older ones are superseded.
            let mut last_order = HashMap::new();
            for (i, p) in result.publish.iter().enumerate() {
                if p.retain {
                    last_order.insert(p.topic.clone(), i);
                }
            }
            for (i, p) in result.publish.into_iter().enumerate() {
                if !p.retain {
                    self.bus.publish(&p.topic, p.payload, false).await;
                } else if last_order.get(&p.topic) == Some(&i) {
                    self.bus.publish_order(&p.topic, || Some(p.payload)).await;
                }
            }
            for d in result.done {
                d.send();
            }
        }
    }
}

fn process(
    conn: &mut Connection,
    signer: &OrderSigner,
    access: &RwLock<Access>,
    topics: &Topics,
    batch: Vec<Command>,
) -> BatchResult {
    let mut out = BatchResult::default();
    let mut tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => {
            tracing::error!(error = %e, "cannot begin a ledger transaction");
            return fail_all(batch, &e.to_string());
        }
    };
    for cmd in batch {
        let mut sp = match tx.savepoint() {
            Ok(sp) => sp,
            Err(e) => {
                out.done.push(done_for(cmd).fail(&e.to_string()));
                continue;
            }
        };
        let mut staged = BatchResult::default();
        let done = apply(&sp, signer, access, topics, cmd, &mut staged);
        let failed = matches!(
            &done,
            Done::Webhook(_, Err(DeskError::Internal(_)))
                | Done::Order(_, Err(DeskError::Internal(_)))
                | Done::Unit(_, Err(DeskError::Internal(_)))
        );
        if failed {
            // Undo this command's writes; the rest of the batch stands.
            let _ = sp.rollback();
        } else if let Err(e) = sp.commit() {
            out.done.push(done.fail(&e.to_string()));
            continue;
        } else {
            out.publish.extend(staged.publish);
            out.new_orders.extend(staged.new_orders);
        }
        out.done.push(done);
    }
    if let Err(e) = tx.commit() {
        tracing::error!(error = %e, "ledger commit failed; nothing in this batch was accepted");
        let msg = e.to_string();
        return BatchResult {
            done: out.done.into_iter().map(|d| d.fail(&msg)).collect(),
            ..BatchResult::default()
        };
    }
    out
}

fn fail_all(batch: Vec<Command>, msg: &str) -> BatchResult {
    BatchResult {
        done: batch.into_iter().map(|c| done_for(c).fail(msg)).collect(),
        ..BatchResult::default()
    }
}

/// An empty answer for a command, to be failed.
fn done_for(cmd: Command) -> Done {
    fn e<T>() -> Result<T, DeskError> {
        Err(DeskError::Stopped)
    }
    match cmd {
        Command::Webhook(_, r) => Done::Webhook(r, e()),
        Command::Order { reply, .. } => Done::Order(reply, e()),
        Command::Pause { reply, .. } | Command::Check(reply) => Done::Unit(reply, e()),
        Command::History { reply, .. } => Done::History(reply, e()),
        Command::Agents { reply, .. } => Done::Agents(reply, e()),
        Command::Status(..) => Done::Nothing,
    }
}

fn apply(
    conn: &Connection,
    signer: &OrderSigner,
    access: &RwLock<Access>,
    topics: &Topics,
    cmd: Command,
    out: &mut BatchResult,
) -> Done {
    match cmd {
        Command::Webhook(w, reply) => {
            let result = decide_webhook(conn, signer, topics, w, out);
            Done::Webhook(reply, result)
        }
        Command::Order {
            repo,
            env,
            sha,
            git_ref,
            kind,
            issued_by,
            reply,
        } => {
            let result = admin_order(
                conn,
                signer,
                access,
                topics,
                (repo, env),
                sha,
                git_ref,
                kind,
                issued_by,
                out,
            );
            Done::Order(reply, result)
        }
        Command::Pause {
            repo,
            env,
            paused,
            reply,
        } => {
            let result = if known(conn, access, &repo, &env).unwrap_or(false) {
                ledger::set_paused(conn, &repo, &env, paused).map_err(internal)
            } else {
                Err(DeskError::UnknownRepoEnv { repo, env })
            };
            Done::Unit(reply, result)
        }
        Command::Status(status, payload) => {
            if let Err(e) = ledger::record_status(conn, &status, &payload) {
                tracing::warn!(error = %e, agent = %status.agent, "status not recorded");
            }
            Done::Nothing
        }
        Command::History {
            repo,
            env,
            limit,
            reply,
        } => {
            let result = ledger::history(conn, repo.as_deref(), env.as_deref(), limit)
                .map(|v| v.into_iter().map(|o| o.order).collect())
                .map_err(internal);
            Done::History(reply, result)
        }
        Command::Agents { repo, env, reply } => {
            let result = ledger::statuses(conn, repo.as_deref(), env.as_deref()).map_err(internal);
            Done::Agents(reply, result)
        }
        Command::Check(reply) => {
            let result = conn.query_row("SELECT 1", [], |_| Ok(())).map_err(internal);
            Done::Unit(reply, result)
        }
    }
}

/// Whether the gateway deploys this repo/env: configured now, or ordered before.
fn known(
    conn: &Connection,
    access: &RwLock<Access>,
    repo: &str,
    env: &str,
) -> Result<bool, DeskError> {
    let configured = access
        .read()
        .expect("access lock poisoned")
        .knows(repo, env);
    Ok(configured
        || ledger::newest_order(conn, repo, env)
            .map_err(internal)?
            .is_some())
}

fn decide_webhook(
    conn: &Connection,
    signer: &OrderSigner,
    topics: &Topics,
    w: Webhook,
    out: &mut BatchResult,
) -> Result<WebhookOutcome, DeskError> {
    let now = time::now();
    let (repo, env) = match &w.intent {
        Intent::Ping { repo } => (repo.clone(), None),
        Intent::Deploy { repo, env, .. } => (Some(repo.clone()), Some(env.clone())),
        Intent::Ignore { repo, env, .. } => (repo.clone(), env.clone()),
    };
    let event = |outcome: EventOutcome, reason: Option<&str>, order: Option<&DeployOrder>| {
        repo.as_ref().map(|repo| {
            let e = Event {
                v: orcastrate_broker::PAYLOAD_VERSION,
                delivery: w.delivery.clone(),
                event: w.event.clone(),
                repo: repo.clone(),
                env: env.clone(),
                outcome,
                reason: reason.map(str::to_owned),
                seq: order.map(|o| o.seq),
                sha: order.map(|o| o.sha.clone()),
                at: now.clone(),
            };
            Publish {
                topic: topics.events(repo),
                payload: serde_json::to_vec(&e).expect("events serialize"),
                retain: false,
            }
        })
    };
    let duplicate = if ledger::delivery_exists(conn, &w.delivery).map_err(internal)? {
        Some("delivery already received".to_owned())
    } else {
        ledger::delivery_of_body(conn, &w.body_sha256)
            .map_err(internal)?
            .map(|first| format!("the same signed body was received as delivery {first}"))
    };
    if let Some(reason) = duplicate {
        out.publish
            .extend(event(EventOutcome::Duplicate, Some(&reason), None));
        return Ok(WebhookOutcome::Duplicate(reason));
    }
    let mut record = DeliveryRecord {
        id: &w.delivery,
        event: &w.event,
        repo: repo.as_deref(),
        env: env.as_deref(),
        outcome: "ignored",
        reason: None,
        seq: None,
        sha: None,
        received_at: &now,
        body_sha256: &w.body_sha256,
    };
    let (outcome, order) = match &w.intent {
        Intent::Ping { .. } => (WebhookOutcome::Ping, None),
        Intent::Ignore { reason, .. } => (WebhookOutcome::Ignored(reason.clone()), None),
        Intent::Deploy {
            repo,
            env,
            sha,
            git_ref,
            kind,
            issued_by,
        } => {
            let newest = ledger::newest_order(conn, repo, env).map_err(internal)?;
            let reason = if ledger::is_paused(conn, repo, env).map_err(internal)? {
                Some(format!("{repo}/{env} is paused: resume it to deploy"))
            } else if ledger::is_bad(conn, repo, env, sha).map_err(internal)? {
                Some(format!(
                    "sha {} is marked bad: it was rolled back from",
                    sha12(sha)
                ))
            } else if newest.as_ref().is_some_and(|n| n.order.sha == *sha) {
                Some(format!("sha {} is already the newest order", sha12(sha)))
            } else {
                None
            };
            match reason {
                Some(reason) => (WebhookOutcome::Ignored(reason), None),
                None => {
                    let stored = new_order(
                        conn,
                        signer,
                        topics,
                        newest.as_ref(),
                        OrderFields {
                            repo,
                            env,
                            sha,
                            git_ref: Some(git_ref.as_str()),
                            kind: *kind,
                            delivery: Some(&w.delivery),
                            issued_by: issued_by.as_deref(),
                        },
                        out,
                    )?;
                    (
                        WebhookOutcome::Accepted(Box::new(stored.clone())),
                        Some(stored),
                    )
                }
            }
        }
    };
    let reason = match &outcome {
        WebhookOutcome::Ping => Some("ping".to_owned()),
        WebhookOutcome::Ignored(r) => Some(r.clone()),
        _ => None,
    };
    if let Some(o) = &order {
        record.outcome = "accepted";
        record.seq = Some(o.seq);
        record.sha = Some(&o.sha);
    }
    record.reason = reason.as_deref();
    ledger::record_delivery(conn, &record).map_err(internal)?;
    out.publish.extend(match &order {
        Some(o) => event(EventOutcome::Accepted, None, Some(o)),
        None => event(EventOutcome::Ignored, reason.as_deref(), None),
    });
    Ok(outcome)
}

struct OrderFields<'a> {
    repo: &'a str,
    env: &'a str,
    sha: &'a str,
    git_ref: Option<&'a str>,
    kind: OrderKind,
    delivery: Option<&'a str>,
    issued_by: Option<&'a str>,
}

/// Numbers, signs and stores a new order, and stages its retained publish.
fn new_order(
    conn: &Connection,
    signer: &OrderSigner,
    topics: &Topics,
    previous: Option<&StoredOrder>,
    f: OrderFields<'_>,
    out: &mut BatchResult,
) -> Result<DeployOrder, DeskError> {
    // Still increasing if the ledger is lost or restored from a backup.
    let seq = previous
        .map(|p| p.order.seq + 1)
        .unwrap_or(0)
        .max(time::unix_ms());
    let mut order = DeployOrder {
        v: orcastrate_broker::PAYLOAD_VERSION,
        seq,
        repo: f.repo.to_owned(),
        env: f.env.to_owned(),
        sha: f.sha.to_owned(),
        git_ref: f.git_ref.map(str::to_owned),
        kind: f.kind,
        delivery: f.delivery.map(str::to_owned),
        issued_at: time::now(),
        issued_by: f.issued_by.map(str::to_owned),
        key_id: String::new(),
        sig: String::new(),
    };
    signer.sign(&mut order);
    let payload = serde_json::to_string(&order).expect("orders serialize");
    ledger::insert_order(conn, &order, &payload).map_err(internal)?;
    out.publish.push(Publish {
        topic: topics.desired(&order.repo, &order.env),
        payload: payload.clone().into_bytes(),
        retain: true,
    });
    out.new_orders.push(StoredOrder {
        order: order.clone(),
        payload,
    });
    Ok(order)
}

#[allow(clippy::too_many_arguments)]
fn admin_order(
    conn: &Connection,
    signer: &OrderSigner,
    access: &RwLock<Access>,
    topics: &Topics,
    (repo, env): (String, String),
    sha: Option<String>,
    git_ref: Option<String>,
    kind: OrderKind,
    issued_by: String,
    out: &mut BatchResult,
) -> Result<DeployOrder, DeskError> {
    if !known(conn, access, &repo, &env)? {
        return Err(DeskError::UnknownRepoEnv { repo, env });
    }
    let newest = ledger::newest_order(conn, &repo, &env).map_err(internal)?;
    let sha = match (kind, sha) {
        (OrderKind::Rollback, to) => {
            let Some(current) = &newest else {
                return Err(DeskError::NoRollbackTarget {
                    repo,
                    env,
                    why: "it has no orders yet".into(),
                });
            };
            let target = match to {
                Some(to) => to,
                None => ledger::rollback_target(conn, &repo, &env, current.order.seq, &current.order.sha)
                    .map_err(internal)?
                    .ok_or_else(|| DeskError::NoRollbackTarget {
                        repo: repo.clone(),
                        env: env.clone(),
                        why: "no earlier order that is not marked bad was reported healthy by an agent; name one with --to SHA".into(),
                    })?,
            };
            if target != current.order.sha {
                ledger::mark_bad(conn, &repo, &env, &current.order.sha, &time::now())
                    .map_err(internal)?;
            }
            target
        }
        (_, Some(sha)) => sha,
        (_, None) => return Err(internal("an order needs a sha")),
    };
    debug_assert!(names::sha(&sha).is_ok(), "validated at the HTTP edge");
    new_order(
        conn,
        signer,
        topics,
        newest.as_ref(),
        OrderFields {
            repo: &repo,
            env: &env,
            sha: &sha,
            git_ref: git_ref.as_deref(),
            kind,
            delivery: None,
            issued_by: Some(&issued_by),
        },
        out,
    )
}
