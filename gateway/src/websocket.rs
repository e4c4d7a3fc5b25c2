//! MQTT over WebSocket at `GET /mqtt` on the HTTP listener (`[http] mqtt_websocket`), for
//! hosts that give a service one HTTP port (Heroku, Render, Fly) and for reverse proxies.
//!
//! The upgraded connection is not a second broker front end: its MQTT bytes go through an
//! in-memory pipe into the embedded broker's own listener code ([`MqttDoor`]), which serves
//! them exactly as a TCP connection from the same peer: the same login, topic rules, quotas,
//! per-address throttling and CONNACK codes, counted against the broker's connection cap.
//! Behind a reverse proxy the peer is the proxy's address, as for every HTTP request.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use orcastrate_broker::embedded::MqttDoor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Where MQTT over WebSocket is served (the path MQTT clients use by convention).
pub const PATH: &str = "/mqtt";

/// The WebSocket subprotocol of MQTT (MQTT 3.1.1 §6).
const SUBPROTOCOL: &str = "mqtt";

/// Bytes buffered each way between a WebSocket and the broker, and the largest frame the
/// gateway sends: larger MQTT packets span frames, which MQTT over WebSocket allows.
const PIPE_BYTES: usize = 8 * 1024;

/// What the `/mqtt` route needs.
#[derive(Clone)]
struct Door {
    door: MqttDoor,
    /// Largest WebSocket message and frame accepted: the broker's largest packet plus its
    /// header, so a client cannot make the gateway buffer more than the broker would.
    max_message: usize,
    /// The gateway's shutdown: every bridged connection closes (agents then reconnect to
    /// their next server), as the HTTP listener's connections do.
    shutdown: CancellationToken,
}

/// The `/mqtt` route, handing each upgraded connection to `door` until `shutdown`;
/// `max_packet` is the broker's largest MQTT packet.
pub fn router(door: MqttDoor, max_packet: usize, shutdown: CancellationToken) -> Router {
    Router::new().route(PATH, get(upgrade)).with_state(Door {
        door,
        max_message: max_packet + 16,
        shutdown,
    })
}

async fn upgrade(
    State(door): State<Door>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let ws = ws.protocols([SUBPROTOCOL]);
    if ws.selected_protocol().is_none() {
        return (
            StatusCode::BAD_REQUEST,
            "MQTT over WebSocket needs the subprotocol mqtt: send Sec-WebSocket-Protocol: mqtt",
        )
            .into_response();
    }
    // tungstenite's 128 KiB default read buffer is allocated per connection: MQTT packets
    // here are small, and thousands of agents stay connected.
    ws.max_message_size(door.max_message)
        .max_frame_size(door.max_message)
        .read_buffer_size(PIPE_BYTES)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            tokio::select! {
                () = bridge(socket, door.door, peer) => {}
                () = door.shutdown.cancelled() => {}
            }
        })
}

/// Copies MQTT bytes between `socket` and the broker until either side closes.
async fn bridge(socket: WebSocket, door: MqttDoor, peer: SocketAddr) {
    let (ours, broker) = tokio::io::duplex(PIPE_BYTES);
    if !door.serve(broker, peer).await {
        tracing::warn!(%peer, "MQTT over WebSocket refused: the embedded broker has stopped");
        return;
    }
    let (mut from_broker, mut to_broker) = tokio::io::split(ours);
    let (mut sink, mut stream) = socket.split();
    // Two independent halves: the broker may block writing to a client that is itself
    // blocked writing to the broker, so neither direction may wait on the other.
    let inbound = async {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Binary(bytes) => {
                    if to_broker.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                // MQTT over WebSocket is binary only (MQTT 3.1.1 §6): close on text.
                Message::Text(_) | Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    };
    let outbound = async {
        let mut buf = vec![0u8; PIPE_BYTES];
        loop {
            match from_broker.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let frame = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if sink.send(frame).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.close().await;
    };
    tokio::select! {
        () = inbound => {}
        () = outbound => {}
    }
    // Dropping the pipe ends the broker's side of the connection (its last will fires as for
    // a dropped TCP connection).
    let _ = to_broker.shutdown().await;
}
