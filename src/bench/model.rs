//! `ferry bench-model`: the benchmark's instant model, so a measurement shows ferry and NATS
//! rather than a model's own cost. Listens on all interfaces on $PORT like any model, so a pod's
//! probes and forwarder reach it on the pod's address;
//! `POST` of `{"x": 2, "y": "hello"}` answers `7` (x + len(y)), as the example model does, and
//! `GET` answers 200 (ready). With a delay, each prediction waits that long first.

use std::time::Duration;

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

#[derive(Deserialize)]
struct Args {
    x: i64,
    y: String,
}

async fn predict(
    State(delay): State<Duration>,
    Json(args): Json<Args>,
) -> Result<Json<i64>, StatusCode> {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let length = i64::try_from(args.y.chars().count()).map_err(|_| StatusCode::BAD_REQUEST)?;
    args.x
        .checked_add(length)
        .map(Json)
        .ok_or(StatusCode::BAD_REQUEST)
}

pub async fn run(port: u16, delay: Duration, cancel: CancellationToken) -> anyhow::Result<()> {
    let app = Router::new()
        .fallback(get(|| async { "{\"ready\": true}" }).post(predict))
        .with_state(delay);
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await?;
    Ok(())
}
