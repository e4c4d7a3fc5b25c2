//! Integration tests of the deploy agent: the real binary against a real embedded broker,
//! real git repositories and a real (tiny Node) service.

mod common;
mod crash;
mod deploys;
mod hardening;
mod orders;
mod process;
mod secrets;
