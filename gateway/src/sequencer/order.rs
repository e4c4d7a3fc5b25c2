//! `Order`: a `manual` or `rollback` order from the admin API, and the numbering, signing and
//! storing every new order goes through.

use orcastrate_broker::message::sha12;
use orcastrate_broker::{names, time, DeployOrder, OrderKind};

use super::command::{internal, Command, Ctx, Publish, Staged};
use super::rollout::{self, policy_of};
use super::DeskError;
use crate::ledger::{self, StoredOrder};
use crate::rollout::RolloutState;

/// A new order asked for through the admin API.
pub(super) struct Order {
    pub repo: String,
    pub env: String,
    /// `None`: roll back to the default target.
    pub sha: Option<String>,
    pub git_ref: Option<String>,
    pub kind: OrderKind,
    pub issued_by: String,
    /// To every agent at once, even where a rollout table would make waves (`deploy --now`;
    /// always so for a rollback).
    pub now: bool,
}

impl Command for Order {
    type Reply = DeployOrder;

    fn apply(self, cx: &Ctx<'_>, out: &mut Staged) -> Result<DeployOrder, DeskError> {
        admin_order(cx, self, out)
    }
}

/// Whether the gateway deploys this repo/env: configured now, or ordered before.
pub(super) fn known(cx: &Ctx<'_>, repo: &str, env: &str) -> Result<bool, DeskError> {
    let configured = cx
        .access
        .read()
        .expect("access lock poisoned")
        .knows(repo, env);
    Ok(configured
        || ledger::newest_order(cx.conn, repo, env)
            .map_err(internal)?
            .is_some())
}

/// What the caller of [`new_order`] decides; the rest (seq, time, signature) it adds.
pub(super) struct OrderFields<'a> {
    pub repo: &'a str,
    pub env: &'a str,
    pub sha: &'a str,
    pub git_ref: Option<&'a str>,
    pub kind: OrderKind,
    pub delivery: Option<&'a str>,
    pub issued_by: Option<&'a str>,
    /// A rollout wave's agents (`None`: every agent) and what the others run.
    pub targets: Option<Vec<String>>,
    pub base_sha: Option<String>,
}

/// Numbers, signs and stores a new order, and stages its retained publish.
pub(super) fn new_order(
    cx: &Ctx<'_>,
    previous: Option<&StoredOrder>,
    f: OrderFields<'_>,
    out: &mut Staged,
) -> Result<DeployOrder, DeskError> {
    // Still increasing if the ledger is lost or restored from a backup.
    let seq = previous
        .map(|p| p.order.seq + 1)
        .unwrap_or(0)
        .max(time::unix_ms());
    let mut order = DeployOrder {
        git_ref: f.git_ref.map(str::to_owned),
        delivery: f.delivery.map(str::to_owned),
        issued_by: f.issued_by.map(str::to_owned),
        targets: f.targets,
        base_sha: f.base_sha,
        ..DeployOrder::new(seq, f.repo, f.env, f.sha, f.kind)
    };
    cx.signer.sign(&mut order);
    let payload = serde_json::to_string(&order).expect("orders serialize");
    ledger::insert_order(cx.conn, &order, &payload).map_err(internal)?;
    if cx.outbox {
        crate::outbox::on_order(cx.conn, &order, previous).map_err(internal)?;
    }
    out.publish.push(Publish {
        topic: cx.topics.desired(&order.repo, &order.env),
        payload: payload.clone().into_bytes(),
        retain: true,
    });
    out.new_orders.push(StoredOrder {
        order: order.clone(),
        payload,
    });
    Ok(order)
}

/// Checks an admin order against the ledger (and picks and marks the rollback target).
fn admin_order(cx: &Ctx<'_>, cmd: Order, out: &mut Staged) -> Result<DeployOrder, DeskError> {
    let Order {
        repo,
        env,
        sha,
        git_ref,
        kind,
        issued_by,
        now,
    } = cmd;
    if !known(cx, &repo, &env)? {
        return Err(DeskError::UnknownRepoEnv { repo, env });
    }
    let newest = ledger::newest_order(cx.conn, &repo, &env).map_err(internal)?;
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
                None => ledger::rollback_target(cx.conn, &repo, &env, current.order.seq, &current.order.sha)
                    .map_err(internal)?
                    .ok_or_else(|| DeskError::NoRollbackTarget {
                        repo: repo.clone(),
                        env: env.clone(),
                        why: "no earlier order that is not marked bad was reported healthy by an agent; name one with --to SHA".into(),
                    })?,
            };
            if target != current.order.sha {
                ledger::mark_bad(cx.conn, &repo, &env, &current.order.sha, &time::now())
                    .map_err(internal)?;
            }
            target
        }
        (_, Some(sha)) => sha,
        (_, None) => return Err(internal("an order needs a sha")),
    };
    debug_assert!(names::sha(&sha).is_ok(), "validated at the HTTP edge");
    let fields = OrderFields {
        repo: &repo,
        env: &env,
        sha: &sha,
        git_ref: git_ref.as_deref(),
        kind,
        delivery: None,
        issued_by: Some(&issued_by),
        targets: None,
        base_sha: None,
    };
    if let Some(policy) = policy_of(cx, &repo, &env).filter(|_| !now) {
        return rollout::start(cx, newest.as_ref(), fields, policy, out);
    }
    let reason = format!("{} of {} by {issued_by}", kind.as_str(), sha12(&sha));
    rollout::end_running(cx, (&repo, &env), RolloutState::Superseded, reason, out)?;
    new_order(cx, newest.as_ref(), fields, out)
}
