//! The blue/green switch behind `[proxy]`: the new release starts on its own private port
//! while the old one serves; only once it passes its health check does the proxy send new
//! connections to it; the old one's connections then drain (up to `drain_s`) and the old
//! app is stopped. A release failing its health check never gets traffic and the old app
//! is never stopped: `failed`, not `rolled_back`. A rollback is the same switch.

use std::sync::Arc;

use orcastrate_broker::{LogStream, Step};
use tokio_util::sync::CancellationToken;

use super::{Job, Outcome};
use crate::config::HealthCheck;
use crate::proxy::Proxy;
use crate::supervisor::FirstExit;

impl Job<'_> {
    /// Starts `release` beside the serving app and switches the proxy to it once healthy.
    pub(super) async fn blue_green(&self, proxy: &Proxy, release: &str) -> Outcome {
        let ctx = self.ctx;
        let port = match crate::proxy::free_port() {
            Ok(port) => port,
            Err(e) => {
                return self.failed_early(None, format!("no private port for {release}: {e}"))
            }
        };
        self.sink.note(
            Some(Step::Start),
            &format!(
                "starting `{}` on private port {port} beside the serving release",
                ctx.settings.steps.start
            ),
        );
        if let Err(e) = ctx.supervisor.start_next(release, port) {
            let error = format!("`{}` did not start: {e}", ctx.settings.steps.start);
            return self.failed_early(None, error);
        }
        self.step(Step::Health);
        let check = crate::config::health_on(&ctx.settings, Some(port));
        let health = self
            .wait_health(
                &check,
                release,
                || ctx.supervisor.next_alive(),
                ctx.supervisor.next_first_exit(),
            )
            .await;
        let switched = health.and_then(|()| {
            ctx.layout
                .switch_current(release)
                .map_err(|e| format!("cannot switch current to {release}: {e}"))
        });
        if let Err(e) = switched {
            if let Some(how) = ctx.supervisor.discard().await {
                self.sink.note(
                    Some(Step::Health),
                    &format!("stopped the new release ({how:?}); it never got traffic"),
                );
            }
            return self.failed_early(None, e);
        }
        let old = ctx.supervisor.promote();
        proxy.switch_to(port);
        self.sink.note(
            Some(Step::Health),
            &format!(
                "current -> releases/{release}; the proxy on {} sends new connections to port {port}",
                proxy.listen()
            ),
        );
        let outcome = self.healthy(release);
        if let Some(old) = old {
            let drain = ctx
                .settings
                .proxy
                .as_ref()
                .map(|p| p.drain)
                .unwrap_or_default();
            if let Some(old_port) = old.port() {
                let left = proxy.drain(old_port, drain).await;
                if left > 0 {
                    self.sink.note(
                        None,
                        &format!(
                            "{left} connection(s) to the old release still open after {} s (drain_s): closing them",
                            drain.as_secs()
                        ),
                    );
                }
            }
            let how = ctx.supervisor.retire(old).await;
            self.sink
                .note(None, &format!("stopped the old app ({how:?})"));
        }
        outcome
    }

    /// Waits until the app started for `release` passes `check`; an app that dies during
    /// the wait fails it at once, saying why, instead of after the whole health timeout.
    pub(super) async fn wait_health(
        &self,
        check: &HealthCheck,
        release: &str,
        alive: impl Fn() -> bool,
        first_exit: Option<Arc<FirstExit>>,
    ) -> Result<(), String> {
        let ctx = self.ctx;
        let never = CancellationToken::new();
        let dir = ctx.layout.release(release);
        tokio::select! {
            health = crate::health::wait_healthy(
                check,
                &dir,
                ctx.settings.health.timeout,
                alive,
                ctx.settings.run_as.as_ref(),
                &never,
            ) => health,
            exit = async {
                match &first_exit {
                    Some(e) => e.wait().await,
                    None => std::future::pending().await,
                }
            } => {
                for line in &exit.stderr {
                    self.sink.line(Some(Step::Health), LogStream::Stderr, line);
                }
                Err(exit.reason(&ctx.settings.steps.start))
            }
        }
    }
}
