//! Integration tests of the deploy agent: the real binary against a real embedded broker,
//! real git repositories and a real (tiny Node) service.

mod app_logs;
mod common;
mod crash;
mod crash_reasons;
mod deploys;
mod hardening;
mod migration;
mod orders;
mod process;
mod secrets;
mod zero_downtime;
