//! `Webhook`: decides a verified webhook (duplicate, ignored or a new order) and records it.

use orcastrate_broker::{message::sha12, time, DeployOrder, Event, EventOutcome};

use super::command::{internal, Command, Ctx, Publish, Staged};
use super::order::OrderFields;
use super::rollout::{self, policy_of};
use super::DeskError;
use crate::github::Intent;
use crate::ledger::{self, DeliveryRecord};
use crate::rollout::config::Policy;
use crate::rollout::store;

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

impl Command for Webhook {
    type Reply = WebhookOutcome;

    fn apply(self, cx: &Ctx<'_>, out: &mut Staged) -> Result<WebhookOutcome, DeskError> {
        decide_webhook(cx, self, out)
    }
}

/// Why a delivery was seen before, if it was.
fn duplicate(cx: &Ctx<'_>, w: &Webhook) -> Result<Option<String>, DeskError> {
    if ledger::delivery_exists(cx.conn, &w.delivery).map_err(internal)? {
        return Ok(Some("delivery already received".to_owned()));
    }
    Ok(ledger::delivery_of_body(cx.conn, &w.body_sha256)
        .map_err(internal)?
        .map(|first| format!("the same signed body was received as delivery {first}")))
}

/// Why a push to a known repo/env does not deploy, if it does not.
fn refusal(
    cx: &Ctx<'_>,
    (repo, env, sha): (&str, &str, &str),
    newest: Option<&ledger::StoredOrder>,
) -> Result<Option<String>, DeskError> {
    if ledger::is_paused(cx.conn, repo, env).map_err(internal)? {
        return Ok(Some(format!("{repo}/{env} is paused: resume it to deploy")));
    }
    if ledger::is_bad(cx.conn, repo, env, sha).map_err(internal)? {
        let why = store::bad_reason(cx.conn, repo, env, sha)
            .map_err(internal)?
            .map(|r| format!("it was reverted ({r})"))
            .unwrap_or_else(|| "it was rolled back from".to_owned());
        return Ok(Some(format!("sha {} is marked bad: {why}", sha12(sha))));
    }
    Ok(newest
        .filter(|n| n.order.sha == *sha)
        .map(|_| format!("sha {} is already the newest order", sha12(sha))))
}

/// A push or merge to a mapped branch: ignored (and why), or the first wave of a rollout.
fn deploy(
    cx: &Ctx<'_>,
    w: &Webhook,
    out: &mut Staged,
) -> Result<(WebhookOutcome, Option<DeployOrder>), DeskError> {
    let Intent::Deploy {
        repo,
        env,
        sha,
        git_ref,
        kind,
        issued_by,
    } = &w.intent
    else {
        return Err(internal("not a deploy intent"));
    };
    let newest = ledger::newest_order(cx.conn, repo, env).map_err(internal)?;
    if let Some(reason) = refusal(cx, (repo, env, sha), newest.as_ref())? {
        return Ok((WebhookOutcome::Ignored(reason), None));
    }
    let policy = policy_of(cx, repo, env).unwrap_or_else(Policy::all_at_once);
    let fields = OrderFields {
        repo,
        env,
        sha,
        git_ref: Some(git_ref.as_str()),
        kind: *kind,
        delivery: Some(&w.delivery),
        issued_by: issued_by.as_deref(),
        targets: None,
        base_sha: None,
    };
    let stored = rollout::start(cx, newest.as_ref(), fields, policy, out)?;
    Ok((
        WebhookOutcome::Accepted(Box::new(stored.clone())),
        Some(stored),
    ))
}

/// Decides a webhook, records its delivery and stages its event (and its order, if any).
fn decide_webhook(cx: &Ctx<'_>, w: Webhook, out: &mut Staged) -> Result<WebhookOutcome, DeskError> {
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
                topic: cx.topics.events(repo),
                payload: serde_json::to_vec(&e).expect("events serialize"),
                retain: false,
            }
        })
    };
    let duplicate = duplicate(cx, &w)?;
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
        Intent::Deploy { .. } => deploy(cx, &w, out)?,
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
    ledger::record_delivery(cx.conn, &record).map_err(internal)?;
    out.publish.extend(match &order {
        Some(o) => event(EventOutcome::Accepted, None, Some(o)),
        None => event(EventOutcome::Ignored, reason.as_deref(), None),
    });
    Ok(outcome)
}
