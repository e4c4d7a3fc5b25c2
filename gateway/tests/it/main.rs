//! Integration tests: the real gateway with its embedded broker on loopback ports, real MQTT
//! clients (rumqttc and mosquitto_sub), real GitHub payloads signed as GitHub signs them.
#![allow(unreachable_pub)]

mod admin;
mod authz;
mod board;
mod common;
mod decision_logs;
mod fleet;
mod limits;
mod migration;
mod mqtt;
mod operator_views;
mod outbox;
mod process;
mod rollout_cli;
mod webhooks;
mod websocket;
