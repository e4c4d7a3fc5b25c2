//! `Feed`: what the board shows beside orders and agents: the newest webhook decisions
//! (accepted, ignored and why) and the paused repo/envs.

use rusqlite::Connection;
use serde::Serialize;

use super::command::{internal, Command, Ctx, Staged};
use super::DeskError;

/// One webhook decision as the board lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Event {
    pub delivery: String,
    pub event: String,
    pub repo: Option<String>,
    pub env: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub seq: Option<i64>,
    pub sha: Option<String>,
    pub received_at: String,
}

/// The board's feed: newest events first, and every paused repo/env.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FeedView {
    pub events: Vec<Event>,
    pub paused: Vec<(String, String)>,
}

/// Up to `limit` newest events and the paused list.
pub(super) struct Feed {
    pub limit: u32,
}

impl Command for Feed {
    type Reply = FeedView;
    const WRITES: bool = false;

    fn apply(self, cx: &Ctx<'_>, _out: &mut Staged) -> Result<FeedView, DeskError> {
        read(cx.conn, self.limit).map_err(internal)
    }
}

fn read(conn: &Connection, limit: u32) -> Result<FeedView, rusqlite::Error> {
    let events = conn
        .prepare_cached(
            "SELECT id, event, repo, env, outcome, reason, seq, sha, received_at FROM deliveries
             ORDER BY received_at DESC, rowid DESC LIMIT ?1",
        )?
        .query_map([limit], |r| {
            Ok(Event {
                delivery: r.get(0)?,
                event: r.get(1)?,
                repo: r.get(2)?,
                env: r.get(3)?,
                outcome: r.get(4)?,
                reason: r.get(5)?,
                seq: r.get(6)?,
                sha: r.get(7)?,
                received_at: r.get(8)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let paused = conn
        .prepare_cached("SELECT repo, env FROM paused ORDER BY repo, env")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(FeedView { events, paused })
}
