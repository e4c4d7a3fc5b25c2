//! Building a release: fetch, checkout into a fresh directory, `[shared]` links, the
//! decrypted config, the hand-over to `run_as`, `install` and `build`, and the completion
//! marker.

use std::path::Path;

use orcastrate_broker::Step;

use super::{Early, Job};
use crate::release::{self, Marker};
use crate::steps::{self, Cmd, StepError};

impl Job<'_> {
    /// What to do when the release directory cannot be written.
    fn fix(&self) -> String {
        format!(
            "make {} writable by the agent's user and check that its disk has free space, then deploy again",
            self.ctx.layout.releases().display()
        )
    }

    /// Fetch, checkout, shared links, config, install, build, marker.
    pub(super) async fn build(&self, name: &str) -> Result<(), Early> {
        let ctx = self.ctx;
        let dir = ctx.layout.release(name);
        self.fetch_sha().await?;
        self.check_out(name, &dir).await?;
        self.configure(name, &dir)?;
        self.run_steps(&dir).await?;
        ctx.layout
            .mark_complete(
                name,
                &Marker {
                    seq: self.order.seq,
                    sha: self.order.sha.clone(),
                    completed_at: orcastrate_broker::time::now(),
                },
            )
            .map_err(|e| {
                Early::Failed(format!(
                    "cannot write the completion marker of {}: {e}; {}",
                    dir.display(),
                    self.fix()
                ))
            })?;
        Ok(())
    }

    /// Writes the files of the order's commit into a fresh release directory.
    async fn check_out(&self, name: &str, dir: &Path) -> Result<(), Early> {
        let ctx = self.ctx;
        let cancel = &self.control.cancel;
        let fix = || self.fix();
        // A leftover of an interrupted try of the same order.
        release::remove_dir(dir).map_err(|e| {
            Early::Failed(format!(
                "cannot remove {}, a leftover in the way of the new release: {e}; remove it by hand, {}",
                dir.display(),
                fix()
            ))
        })?;
        std::fs::create_dir_all(dir).map_err(|e| {
            Early::Failed(format!(
                "cannot create the release directory {}: {e}; {}",
                dir.display(),
                fix()
            ))
        })?;
        let index = ctx.layout.tmp().join(format!("index-{name}"));
        let _ = self.sink.take_first_error();
        if let Err(e) = ctx
            .git
            .checkout(&self.order.sha, dir, &index, self.sink, &ctx.state, cancel)
            .await
        {
            return Err(match e {
                StepError::Cancelled => Early::Cancelled,
                e => Early::Failed(format!(
                    "cannot write the files of {} into {}: {e}{}; {}",
                    self.order.sha,
                    dir.display(),
                    self.sink
                        .take_first_error()
                        .map(|git| format!(": {git}"))
                        .unwrap_or_default(),
                    fix()
                )),
            });
        }

        Ok(())
    }

    /// Links `[shared]`, decrypts the config, and hands the release to `run_as`.
    fn configure(&self, name: &str, dir: &Path) -> Result<(), Early> {
        let ctx = self.ctx;
        self.step(Step::Config);
        ctx.layout
            .link_shared(name, &ctx.settings.shared_files, &ctx.settings.shared_dirs)
            .map_err(|e| {
                Early::Failed(format!("cannot link [shared] files into the release: {e}"))
            })?;
        match crate::secrets::decrypt(dir, &ctx.settings.env, ctx.settings.config_key.as_deref()) {
            Ok(Some(path)) => self.sink.note(
                Some(Step::Config),
                &format!(
                    "decrypted {}",
                    path.strip_prefix(dir).unwrap_or(&path).display()
                ),
            ),
            Ok(None) => {}
            Err(e) => return Err(Early::Failed(e)),
        }

        if let Some(user) = &ctx.settings.run_as {
            self.hand_over(dir, user)?;
        }
        Ok(())
    }

    /// `install`, then `build`.
    async fn run_steps(&self, dir: &Path) -> Result<(), Early> {
        let ctx = self.ctx;
        let cancel = &self.control.cancel;

        for (step, command) in [
            (Step::Install, &ctx.settings.steps.install),
            (Step::Build, &ctx.settings.steps.build),
        ] {
            if cancel.is_cancelled() {
                return Err(Early::Cancelled);
            }
            if command.is_empty() {
                continue;
            }
            self.step(step);
            self.sink.note(Some(step), &format!("running `{command}`"));
            steps::run(
                &Cmd::in_release(command, dir, ctx.settings.run_as.as_ref()),
                step,
                self.sink,
                &ctx.state,
                cancel,
            )
            .await?;
        }
        Ok(())
    }

    /// Makes the `run_as` user the owner of the release (its decrypted config included) and
    /// of the `[shared]` entries, so its steps and app can use them.
    fn hand_over(&self, dir: &Path, user: &crate::config::RunAs) -> Result<(), Early> {
        let ctx = self.ctx;
        let fail = |e: std::io::Error| {
            Early::Failed(format!(
                "cannot give the release to run_as user {}: {e}; the agent must run as root to use run_as",
                user.name
            ))
        };
        crate::users::chown_tree(dir, user).map_err(fail)?;
        let shared = ctx.layout.shared();
        for path in ctx
            .settings
            .shared_files
            .iter()
            .chain(&ctx.settings.shared_dirs)
        {
            let target = shared.join(path);
            if target.exists() {
                std::os::unix::fs::lchown(&target, Some(user.uid), Some(user.gid)).map_err(fail)?;
            }
        }
        Ok(())
    }
}
