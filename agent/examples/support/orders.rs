//! What the agent benchmarks that deploy (`bench_rollback`, `bench_proxy`) share: signed
//! orders, a watcher of the agent's statuses, and the rows of `scripts/bench.sh`'s table.

use std::time::{Duration, Instant};

use anyhow::bail;
use orcastrate_broker::embedded::LinkReceiver;
use orcastrate_broker::{AgentState, AgentStatus, DeployOrder, OrderKind, OrderSigner};
use tokio::sync::mpsc;

/// Statuses as the watcher received them.
pub(crate) struct Watch {
    rx: mpsc::UnboundedReceiver<(Instant, AgentStatus)>,
    seen: Vec<(Instant, AgentStatus)>,
}

impl Watch {
    /// Collects the statuses the link receives, stamped with their arrival.
    pub(crate) fn spawn(mut receiver: LinkReceiver) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(msg) = receiver.recv().await {
                if let Ok(s) = serde_json::from_slice::<AgentStatus>(&msg.payload) {
                    let _ = tx.send((Instant::now(), s));
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for the final state of `seq`; returns every status of it with its arrival time.
    pub(crate) async fn until_done(
        &mut self,
        seq: u64,
    ) -> anyhow::Result<Vec<(Instant, AgentStatus)>> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let of_seq: Vec<_> = self
                .seen
                .iter()
                .filter(|(_, s)| s.seq == Some(seq))
                .cloned()
                .collect();
            if let Some((_, last)) = of_seq.last() {
                if !matches!(
                    last.state,
                    AgentState::Deploying | AgentState::Idle | AgentState::Offline
                ) {
                    if last.state != AgentState::Healthy {
                        bail!("seq {seq} ended {:?}: {:?}", last.state, last.error);
                    }
                    return Ok(of_seq);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(item)) => self.seen.push(item),
                _ => bail!("timed out waiting for seq {seq}"),
            }
        }
    }
}

/// A row of the combined table `scripts/bench.sh` prints (it sets `ORCASTRATE_BENCH_SUMMARY`);
/// nothing otherwise.
pub(crate) fn summary_row(what: &str, measured: &str, target: &str, met: bool) {
    if std::env::var_os("ORCASTRATE_BENCH_SUMMARY").is_none() {
        return;
    }
    let verdict = if met { "ok" } else { "MISSED" };
    println!("SUMMARY| {what} | {measured} | {target} | {verdict} |");
}

/// Signed orders with increasing `seq`.
pub(crate) struct Orders<'a> {
    pub(crate) signer: &'a OrderSigner,
    pub(crate) seq: u64,
    pub(crate) repo: &'a str,
    pub(crate) env: &'a str,
}

impl Orders<'_> {
    /// The next order for `sha`: its `seq` and payload.
    pub(crate) fn next(&mut self, sha: &str, kind: OrderKind) -> (u64, Vec<u8>) {
        self.seq += 1;
        let mut order = DeployOrder {
            v: 1,
            seq: self.seq,
            repo: self.repo.into(),
            env: self.env.into(),
            sha: sha.into(),
            git_ref: Some("refs/heads/main".into()),
            kind,
            delivery: None,
            issued_at: orcastrate_broker::time::now(),
            issued_by: None,
            key_id: String::new(),
            targets: None,
            base_sha: None,
            sig: String::new(),
        };
        self.signer.sign(&mut order);
        (self.seq, serde_json::to_vec(&order).unwrap())
    }
}
