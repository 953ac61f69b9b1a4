//! `/healthz`, `/readyz` and `/metrics` for every long-running role, and the one metrics
//! registry each process shares between its modules.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::http_server::{self, Limits};
use crate::metrics::Format;

/// Set while the process (or one worker) can do its work; `/readyz` answers 503 otherwise, and
/// for good once the process is stopping.
#[derive(Clone)]
pub struct Readiness(Arc<watch::Sender<Status>>);

#[derive(Clone, Copy, Debug, Default)]
struct Status {
    ready: bool,
    stopping: bool,
}

impl Status {
    fn serves(self) -> bool {
        self.ready && !self.stopping
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness(Arc::new(watch::Sender::new(Status::default())))
    }
}

impl Readiness {
    pub fn set_ready(&self) {
        self.0.send_modify(|state| state.ready = true);
    }
    /// Ready no longer, until set ready again (a worker whose model is unavailable).
    pub fn set_not_ready(&self) {
        self.0.send_modify(|state| state.ready = false);
    }
    /// Ready never again, whatever sets it ready later: the process is stopping and wants no
    /// new traffic routed to it.
    pub fn stop(&self) {
        self.0.send_modify(|state| state.stopping = true);
    }
    /// Stops (see [`Readiness::stop`]) as soon as `cancel` fires.
    pub fn stop_when(&self, cancel: CancellationToken) {
        let readiness = self.clone();
        tokio::spawn(async move {
            cancel.cancelled().await;
            readiness.stop();
        });
    }
    pub fn is_ready(&self) -> bool {
        self.0.borrow().serves()
    }
    /// A receiver that sees every later change of readiness.
    pub fn watch(&self) -> watch::Receiver<impl Sized + use<>> {
        self.0.subscribe()
    }
    /// Resolves once ready.
    pub async fn ready(&self) {
        let mut receiver = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = receiver.wait_for(|state| state.serves()).await;
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// Routes for probes and metrics, to merge into a role's own router or serve alone.
pub fn router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    let (router, _) = routes().split_for_parts();
    router.with_state(AdminState {
        registry,
        readiness,
    })
}

/// The OpenAPI description of the routes of [`router`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(healthcheck))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "probes", responses((status = 200, body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// The process is up (Launch's name for `/healthz`).
#[utoipa::path(get, path = "/healthcheck", tag = "probes",
    responses((status = 200, body = String)))]
async fn healthcheck() -> &'static str {
    "ok"
}

/// Whether the process takes traffic: 503 before it is ready and once it is stopping.
#[utoipa::path(get, path = "/readyz", tag = "probes", responses(
    (status = 200, body = String), (status = 503, description = "Not ready", body = String)))]
async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// The registry in the format the scraper's `Accept` header prefers (see [`Format::negotiate`]).
#[utoipa::path(get, path = "/metrics", tag = "probes", responses((status = 200,
    description = "Prometheus text or OpenMetrics, as `Accept` prefers", body = String)))]
async fn metrics(State(state): State<AdminState>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let format = Format::negotiate(accept);
    match format.encode(&state.registry) {
        Ok(text) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, format.content_type()),
                (header::VARY, "Accept"),
            ],
            text,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "encoding metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Serves `router` on `addr` within `limits` until `cancel` fires.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    limits: Limits,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "admin endpoint listening");
    http_server::serve(listener, router, limits, cancel).await
}
