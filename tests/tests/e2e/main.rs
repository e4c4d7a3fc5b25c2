//! End-to-end tests: the real gateway (its library, with its embedded broker on loopback
//! ports) and the real agent (its library `run`) working together, with real git
//! repositories in temp dirs, a tiny Node app, signed GitHub webhooks, and MQTT clients
//! (rumqttc and mosquitto_pub) watching and attacking the bus. `restarts`,
//! `rollout_restarts` and `quickstart` run the gateway binary (and the quickstart all three): build the workspace first
//! (`cargo test --workspace` does). Helpers come from `orcastrate-testkit` and `harness`.
//!
//! Needs `git`, `node`, `mosquitto-clients`, `openssl`, `nginx` and the PyPI `paho-mqtt`
//! (see `.ci/run`).
#![allow(unreachable_pub)]

mod board;
mod browser;
mod config;
mod deploys;
mod engines;
mod faults;
mod forged;
mod harness;
mod nats;
mod quickstart;
mod restarts;
mod rollout_restarts;
mod rollouts;
mod websocket;
