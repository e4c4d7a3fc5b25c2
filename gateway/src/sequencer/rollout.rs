//! Rollout commands: starting one with a push's first wave, the tick that moves running ones
//! on (next wave, complete, revert), and the operator's promote, abort and list. The
//! decisions are `crate::rollout::plan`'s; this file turns them into orders and rows.

use orcastrate_broker::message::sha12;
use orcastrate_broker::{time, AgentState, DeployOrder, Event, EventOutcome, OrderKind};

use super::command::{internal, Command, Ctx, Publish, Staged};
use super::order::{known, new_order, OrderFields};
use super::DeskError;
use crate::ledger::{self, StoredOrder};
use crate::rollout::config::Policy;
use crate::rollout::plan::{self, Decision};
use crate::rollout::{store, Rollout, RolloutState};

/// Who the gateway names as the issuer of the orders a rollout makes on its own.
pub(super) const ISSUER: &str = "rollout";

/// The rollout policy of a repo/env: its table, or every agent at once.
pub(super) fn policy_of(cx: &Ctx<'_>, repo: &str, env: &str) -> Option<Policy> {
    let access = cx.access.read().expect("access lock poisoned");
    access.repo(repo)?.rollout.get(env).cloned()
}

/// The agents known for a repo/env: a verified status that is not `offline`.
fn known_agents(cx: &Ctx<'_>, repo: &str, env: &str) -> Result<Vec<String>, DeskError> {
    Ok(ledger::statuses(cx.conn, Some(repo), Some(env))
        .map_err(internal)?
        .into_iter()
        .filter(|s| s.state != AgentState::Offline)
        .map(|s| s.agent)
        .collect())
}

/// An `Event` about a rollout on the repo's `events` topic.
fn event(cx: &Ctx<'_>, r: &Rollout, reason: String, order: Option<&DeployOrder>) -> Publish {
    let e = Event {
        v: orcastrate_broker::PAYLOAD_VERSION,
        delivery: format!("rollout-{}", r.id),
        event: "rollout".into(),
        repo: r.repo.clone(),
        env: Some(r.env.clone()),
        outcome: EventOutcome::Accepted,
        reason: Some(reason),
        seq: order.map(|o| o.seq),
        sha: order.map(|o| o.sha.clone()),
        at: time::now(),
    };
    Publish {
        topic: cx.topics.events(&r.repo),
        payload: serde_json::to_vec(&e).expect("events serialize"),
        retain: false,
    }
}

/// Ends the running rollout of a repo/env, if any, as `state` with `reason`.
pub(super) fn end_running(
    cx: &Ctx<'_>,
    (repo, env): (&str, &str),
    state: RolloutState,
    reason: String,
    out: &mut Staged,
) -> Result<Option<Rollout>, DeskError> {
    let Some(mut r) = store::running_of(cx.conn, repo, env).map_err(internal)? else {
        return Ok(None);
    };
    finish(cx, &mut r, state, reason, out)?;
    Ok(Some(r))
}

fn finish(
    cx: &Ctx<'_>,
    r: &mut Rollout,
    state: RolloutState,
    reason: String,
    out: &mut Staged,
) -> Result<(), DeskError> {
    // A push superseding an all-at-once rollout is every push's routine, which the new
    // order's own decision line already tells.
    if r.policy.waves.len() > 1 || state != RolloutState::Superseded {
        tracing::info!(rollout = r.id, repo = %r.repo, env = %r.env, state = state.as_str(), %reason, "rollout ended");
    }
    r.state = state;
    r.reason = Some(reason);
    r.updated_at = time::now();
    store::update(cx.conn, r).map_err(internal)?;
    out.rollouts.push(r.clone());
    Ok(())
}

/// Starts a rollout of `f.sha` with `policy`: its first wave's order (a running rollout of
/// the repo/env is superseded and its `base_sha` kept: its sha never finished).
pub(super) fn start(
    cx: &Ctx<'_>,
    newest: Option<&StoredOrder>,
    mut f: OrderFields<'_>,
    policy: Policy,
    out: &mut Staged,
) -> Result<DeployOrder, DeskError> {
    let (repo, env) = (f.repo, f.env);
    let reason = format!(
        "superseded by a newer {} of {}",
        f.kind.as_str(),
        sha12(f.sha)
    );
    let base = match end_running(cx, (repo, env), RolloutState::Superseded, reason, out)? {
        Some(previous) => previous.base_sha,
        None => ledger::rollback_target(cx.conn, repo, env, u64::MAX, f.sha).map_err(internal)?,
    };
    let now = time::now();
    let mut r = Rollout {
        id: 0,
        repo: repo.to_owned(),
        env: env.to_owned(),
        sha: f.sha.to_owned(),
        base_sha: base.clone(),
        kind: f.kind,
        first_seq: 0,
        wave_seq: 0,
        wave: 0,
        policy,
        targets: None,
        state: RolloutState::Running,
        reason: None,
        wave_started_ms: time::unix_ms(),
        hold_from_ms: None,
        left_out: Vec::new(),
        started_at: now.clone(),
        updated_at: now,
    };
    // Waves pick agents in an order seeded by the rollout's id, so a rollout with waves is
    // stored first; an all-at-once one (every push by default) is stored once, with its order.
    let waves = r.policy.waves.len() > 1;
    if waves {
        r = store::insert(cx.conn, r).map_err(internal)?;
        let known = known_agents(cx, repo, env)?;
        r.targets = plan::wave_targets(&r.policy, 0, r.id, &known, None);
    }
    f.targets.clone_from(&r.targets);
    f.base_sha.clone_from(&base);
    let order = new_order(cx, newest, f, out)?;
    r.first_seq = order.seq;
    r.wave_seq = order.seq;
    if waves {
        store::update(cx.conn, &r).map_err(internal)?;
        out.publish.push(event(
            cx,
            &r,
            format!("rollout started: wave 1 of {}", r.policy.waves.len()),
            Some(&order),
        ));
    } else {
        r = store::insert(cx.conn, r).map_err(internal)?;
    }
    out.rollouts.push(r);
    Ok(order)
}

/// Publishes the next wave of `r`.
fn next_wave(
    cx: &Ctx<'_>,
    r: &mut Rollout,
    left_out: Vec<String>,
    why: &str,
    out: &mut Staged,
) -> Result<(), DeskError> {
    let newest = ledger::newest_order(cx.conn, &r.repo, &r.env).map_err(internal)?;
    let Some(current) = newest.as_ref().filter(|n| n.order.seq == r.wave_seq) else {
        return finish(
            cx,
            r,
            RolloutState::Superseded,
            "a newer order took over".into(),
            out,
        );
    };
    let wave = r.wave + 1;
    let known = known_agents(cx, &r.repo, &r.env)?;
    let targets = plan::wave_targets(&r.policy, wave, r.id, &known, r.targets.as_deref());
    let o = &current.order;
    let order = new_order(
        cx,
        newest.as_ref(),
        OrderFields {
            repo: &r.repo,
            env: &r.env,
            sha: &r.sha,
            git_ref: o.git_ref.as_deref(),
            kind: r.kind,
            delivery: o.delivery.as_deref(),
            issued_by: o.issued_by.as_deref(),
            targets: targets.clone(),
            base_sha: r.base_sha.clone(),
        },
        out,
    )?;
    r.wave = wave;
    r.wave_seq = order.seq;
    r.targets = targets;
    r.wave_started_ms = time::unix_ms();
    r.hold_from_ms = None;
    r.left_out.extend(left_out.iter().cloned());
    r.updated_at = time::now();
    store::update(cx.conn, r).map_err(internal)?;
    let mut reason = format!("wave {} of {}{why}", wave + 1, r.policy.waves.len());
    if !left_out.is_empty() {
        reason.push_str(&format!("; left out (offline): {}", left_out.join(", ")));
    }
    tracing::info!(rollout = r.id, repo = %r.repo, env = %r.env, seq = order.seq, %reason, "next wave");
    out.publish.push(event(cx, r, reason, Some(&order)));
    out.rollouts.push(r.clone());
    Ok(())
}

/// Reverts `r`: a `rollback` to its base for every agent, the sha marked bad with `reason`.
/// A rollout that does not revert by itself (manual), or that has no base, halts instead.
fn revert(
    cx: &Ctx<'_>,
    r: &mut Rollout,
    reason: String,
    state: RolloutState,
    out: &mut Staged,
) -> Result<(), DeskError> {
    let base = match (&r.base_sha, r.reverts() || state == RolloutState::Aborted) {
        (Some(base), true) => base.clone(),
        (None, _) => {
            let why = format!("{reason}; nothing to revert to: no earlier sha ran healthy");
            out.publish
                .push(event(cx, r, format!("halted: {why}"), None));
            return finish(cx, r, RolloutState::Halted, why, out);
        }
        (Some(_), false) => {
            out.publish
                .push(event(cx, r, format!("halted: {reason}"), None));
            return finish(cx, r, RolloutState::Halted, reason, out);
        }
    };
    let now = time::now();
    store::mark_bad(cx.conn, &r.repo, &r.env, &r.sha, &now, &reason).map_err(internal)?;
    let newest = ledger::newest_order(cx.conn, &r.repo, &r.env).map_err(internal)?;
    let order = new_order(
        cx,
        newest.as_ref(),
        OrderFields {
            repo: &r.repo,
            env: &r.env,
            sha: &base,
            git_ref: None,
            kind: OrderKind::Rollback,
            delivery: None,
            issued_by: Some(ISSUER),
            targets: None,
            base_sha: None,
        },
        out,
    )?;
    tracing::warn!(rollout = r.id, repo = %r.repo, env = %r.env, sha = %r.sha, to = %base, %reason, "rollout reverted");
    out.publish.push(event(
        cx,
        r,
        format!("reverted {} to {}: {reason}", sha12(&r.sha), sha12(&base)),
        Some(&order),
    ));
    finish(cx, r, state, reason, out)
}

/// Moves every running rollout on, as its agents' statuses and the clock say.
pub(super) struct Tick;

impl Command for Tick {
    type Reply = ();
    // What a tick changes, it stages (rollouts, orders, events).
    const WRITES: bool = false;

    fn apply(self, cx: &Ctx<'_>, out: &mut Staged) -> Result<(), DeskError> {
        let now_ms = time::unix_ms();
        for mut r in store::running(cx.conn).map_err(internal)? {
            let newest = ledger::newest_order(cx.conn, &r.repo, &r.env).map_err(internal)?;
            if newest.is_none_or(|n| n.order.seq != r.wave_seq) {
                finish(
                    cx,
                    &mut r,
                    RolloutState::Superseded,
                    "a newer order took over".into(),
                    out,
                )?;
                continue;
            }
            let statuses =
                ledger::statuses(cx.conn, Some(&r.repo), Some(&r.env)).map_err(internal)?;
            match plan::decide(&r, &statuses, now_ms) {
                Decision::Wait { hold_from } if hold_from != r.hold_from_ms => {
                    r.hold_from_ms = hold_from;
                    store::update(cx.conn, &r).map_err(internal)?;
                }
                Decision::Wait { .. } => {}
                Decision::NextWave { left_out } => next_wave(cx, &mut r, left_out, "", out)?,
                Decision::Complete { left_out } => {
                    r.left_out.extend(left_out);
                    let reason = if r.left_out.is_empty() {
                        "every agent healthy".to_owned()
                    } else {
                        format!(
                            "every agent healthy but (offline, left out) {}",
                            r.left_out.join(", ")
                        )
                    };
                    if r.policy.waves.len() > 1 {
                        out.publish.push(event(
                            cx,
                            &r,
                            format!("rollout completed: {reason}"),
                            None,
                        ));
                    }
                    finish(cx, &mut r, RolloutState::Completed, reason, out)?;
                }
                Decision::Revert { reason } => {
                    revert(cx, &mut r, reason, RolloutState::Reverted, out)?;
                }
            }
        }
        Ok(())
    }
}

/// An operator's promote (`abort: false`: the next wave now, hold or not) or abort (a
/// revert to the base sha).
pub(super) struct Steer {
    pub repo: String,
    pub env: String,
    pub abort: bool,
    pub by: String,
}

impl Command for Steer {
    type Reply = Rollout;

    fn apply(self, cx: &Ctx<'_>, out: &mut Staged) -> Result<Rollout, DeskError> {
        if !known(cx, &self.repo, &self.env)? {
            return Err(DeskError::UnknownRepoEnv {
                repo: self.repo,
                env: self.env,
            });
        }
        let conflict = |why: &str| DeskError::NoRollout {
            repo: self.repo.clone(),
            env: self.env.clone(),
            why: why.to_owned(),
        };
        let mut r = store::running_of(cx.conn, &self.repo, &self.env)
            .map_err(internal)?
            .ok_or_else(|| conflict("no rollout is running"))?;
        if self.abort {
            revert(
                cx,
                &mut r,
                format!("aborted by {}", self.by),
                RolloutState::Aborted,
                out,
            )?;
        } else if r.wave + 1 >= r.policy.waves.len() {
            return Err(conflict("the rollout is at its last wave already"));
        } else {
            next_wave(
                cx,
                &mut r,
                Vec::new(),
                &format!(" (promoted by {})", self.by),
                out,
            )?;
        }
        Ok(r)
    }
}

/// Rollouts newest first.
pub(super) struct List {
    pub repo: Option<String>,
    pub env: Option<String>,
    pub limit: u32,
}

impl Command for List {
    type Reply = Vec<Rollout>;
    const WRITES: bool = false;

    fn apply(self, cx: &Ctx<'_>, _out: &mut Staged) -> Result<Vec<Rollout>, DeskError> {
        store::list(
            cx.conn,
            self.repo.as_deref(),
            self.env.as_deref(),
            self.limit,
        )
        .map_err(internal)
    }
}

#[cfg(test)]
mod tests {
    use orcastrate_broker::AgentStatus;

    use super::*;
    use crate::rollout::config::Wave;
    use crate::sequencer::command::testing::{temp_ledger, Parts};

    const REPO: &str = "acme/web";
    const ENV: &str = "prod";

    fn sha(n: u8) -> String {
        format!("{n:02x}").repeat(20)
    }

    fn fields(sha: &str, kind: OrderKind) -> OrderFields<'_> {
        OrderFields {
            repo: REPO,
            env: ENV,
            sha,
            git_ref: None,
            kind,
            delivery: None,
            issued_by: None,
            targets: None,
            base_sha: None,
        }
    }

    fn report(conn: &rusqlite::Connection, agent: &str, state: AgentState, order: &DeployOrder) {
        let s: AgentStatus = serde_json::from_value(serde_json::json!({
            "v": 1, "agent": agent, "host": "h", "repo": REPO, "env": ENV, "session": "s",
            "state": state, "step": null, "seq": order.seq,
            "sha": order.sha_for(agent).unwrap(), "running_sha": null, "previous_sha": null,
            "release": null, "updated_at": time::now(), "deploy_ms": null,
            "error": "health check failed", "version": "0", "mac": ""
        }))
        .unwrap();
        ledger::record_status(conn, &s, &serde_json::to_string(&s).unwrap()).unwrap();
    }

    fn newest(conn: &rusqlite::Connection) -> DeployOrder {
        ledger::newest_order(conn, REPO, ENV)
            .unwrap()
            .unwrap()
            .order
    }

    /// Rolls `sha(1)` out to all at once and has `agents` report it healthy: the base sha.
    fn healthy_base(cx: &Ctx<'_>, agents: &[&str]) -> Staged {
        let mut out = Staged::default();
        let good = next(cx, 1, OrderKind::Push, Policy::all_at_once(), &mut out);
        for agent in agents {
            report(cx.conn, agent, AgentState::Healthy, &good);
        }
        Tick.apply(cx, &mut out).unwrap();
        out
    }

    /// Starts a rollout of `sha(n)` after the newest order, as the deploy commands do.
    fn next(cx: &Ctx<'_>, n: u8, kind: OrderKind, policy: Policy, out: &mut Staged) -> DeployOrder {
        let previous = ledger::newest_order(cx.conn, REPO, ENV).unwrap();
        start(cx, previous.as_ref(), fields(&sha(n), kind), policy, out).unwrap()
    }

    fn two_waves() -> Policy {
        Policy {
            waves: vec![Wave::Agents(vec!["web-1".into()]), Wave::Share(100)],
            hold_s: 0,
            wave_timeout_s: Some(600),
            max_failed: 0,
        }
    }

    #[test]
    fn a_failed_push_is_reverted_to_the_last_healthy_sha_and_marked_bad() {
        let (_dir, conn) = temp_ledger();
        let parts = Parts::new();
        let cx = parts.cx(&conn);
        let mut out = healthy_base(&cx, &["web-1", "web-2"]);
        let bad = next(&cx, 2, OrderKind::Push, two_waves(), &mut out);
        assert_eq!(bad.targets.as_deref(), Some(&["web-1".to_owned()][..]));
        assert_eq!(bad.base_sha, Some(sha(1)));
        // web-2 is not in the wave: it reports the base sha, which is no failure of it.
        report(&conn, "web-2", AgentState::Healthy, &bad);
        report(&conn, "web-1", AgentState::RolledBack, &bad);
        let mut out = Staged::default();
        Tick.apply(&cx, &mut out).unwrap();
        let revert = newest(&conn);
        assert_eq!(
            (revert.kind, revert.sha.as_str()),
            (OrderKind::Rollback, sha(1).as_str())
        );
        assert_eq!(revert.issued_by.as_deref(), Some(ISSUER));
        assert!(ledger::is_bad(&conn, REPO, ENV, &sha(2)).unwrap());
        let reason = store::bad_reason(&conn, REPO, ENV, &sha(2))
            .unwrap()
            .unwrap();
        assert!(reason.contains("web-1 rolled_back"), "{reason}");
        let r = store::list(&conn, Some(REPO), Some(ENV), 1)
            .unwrap()
            .remove(0);
        assert_eq!(r.state, RolloutState::Reverted);
        let event: Event = serde_json::from_slice(&out.publish.last().unwrap().payload).unwrap();
        assert!(event.reason.unwrap().starts_with("reverted"), "event");
        // Nothing more to do for a reverted rollout.
        let mut again = Staged::default();
        Tick.apply(&cx, &mut again).unwrap();
        assert_eq!(newest(&conn).seq, revert.seq);
    }

    #[test]
    fn a_failed_manual_deploy_halts_and_a_newer_push_keeps_the_base() {
        let (_dir, conn) = temp_ledger();
        let parts = Parts::new();
        let cx = parts.cx(&conn);
        let mut out = healthy_base(&cx, &["web-1"]);
        let manual = next(&cx, 3, OrderKind::Manual, two_waves(), &mut out);
        report(&conn, "web-1", AgentState::Failed, &manual);
        Tick.apply(&cx, &mut out).unwrap();
        assert_eq!(
            newest(&conn).seq,
            manual.seq,
            "a manual deploy is not reverted"
        );
        let r = store::list(&conn, Some(REPO), Some(ENV), 1)
            .unwrap()
            .remove(0);
        assert_eq!(r.state, RolloutState::Halted);
        assert!(!ledger::is_bad(&conn, REPO, ENV, &sha(3)).unwrap());

        // A push, then a newer one while the first runs: same base, the first superseded.
        let first = next(&cx, 4, OrderKind::Push, two_waves(), &mut out);
        let second = next(&cx, 5, OrderKind::Push, two_waves(), &mut out);
        assert_eq!(first.base_sha, Some(sha(1)));
        assert_eq!(second.base_sha, Some(sha(1)));
        let list = store::list(&conn, Some(REPO), Some(ENV), 2).unwrap();
        assert_eq!(list[1].state, RolloutState::Superseded);
        assert_eq!(list[0].state, RolloutState::Running);
    }
}
