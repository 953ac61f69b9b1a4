//! Every HTTP listener ferry runs (the gateway, `ferry dev`, admin listeners, a forwarder's
//! sync server) serves through here, with bounded connections: a connection must send a
//! request's full header within the header timeout (from its first byte, or from accept), may
//! wait idle between keep-alive requests only for the idle timeout, and at most
//! `max_connections` are served at once — further ones wait in the listen backlog until a
//! slot frees, so slots held by idle or slow clients are reclaimed by the timeouts, never
//! taken from requests being served. Stops accepting on cancel and lets requests under way
//! finish — for as long as they take, or within a grace, after which those still waiting for
//! their answer get a retryable 503 and the server returns. A server that others stand in for
//! hands its clients over first (see [`Handover`]).
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection waits for its next
//! request, so it cannot be paired with a longer idle time: each connection's [`Activity`]
//! keeps both deadlines instead.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long connections may take and how many are served at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest a connection may take to send a request's header.
    pub header_timeout: Duration,
    /// Longest a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
            max_connections: 4096,
        }
    }
}

/// After the shutdown grace: how long the 503s and cut-off streams get to reach their clients
/// before the remaining connections are dropped.
const FLUSH_AFTER_GRACE: Duration = Duration::from_secs(1);

/// What a request still waiting for its answer when the shutdown grace runs out is told.
const GRACE_RAN_OUT: &str =
    "the server is stopping and could not answer this request in time; send it again";

/// Serves `router` on `listener` within `limits` until `cancel` fires, then waits for the
/// requests under way.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    serve_until(listener, router, limits, cancel, None).await
}

/// How a stopping server hands its clients to the servers that stay, failing no request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handover {
    /// How long it keeps serving everything once told to stop (reporting not ready), so load
    /// balancers, Service endpoints and gateways stop sending to it first. Every response in
    /// that time asks its client to close the connection (`Connection: close`): no client is
    /// left holding an idle connection that the server closes just as a request goes out on it.
    pub delay: Duration,
    /// Then, no longer accepting, how long the requests under way get to finish (`None`: as
    /// long as they take). Each one still waiting for its answer is then answered 503 with
    /// `Retry-After` and a `detail` ([`GRACE_RAN_OUT`]), a response already being sent (a
    /// stream) is cut off, and the server returns.
    pub grace: Option<Duration>,
}

/// Serves `router` on `listener` within `limits`; once `cancel` fires, hands its clients over
/// (see [`Handover`]) and returns when the requests under way have ended.
pub async fn serve_handing_over(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    handover: Handover,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let stop_accepting = CancellationToken::new();
    let router = closing_connections_once(router, cancel.clone());
    let serving = serve_until(
        listener,
        router,
        limits,
        stop_accepting.clone(),
        handover.grace,
    );
    let mut serving = std::pin::pin!(serving);
    tokio::select! {
        served = &mut serving => return served,
        () = cancel.cancelled() => {}
    }
    tracing::info!(
        delay_seconds = handover.delay.as_secs_f64(),
        "stopping: still serving for the handover delay"
    );
    tokio::select! {
        served = &mut serving => return served,
        () = tokio::time::sleep(handover.delay) => {}
    }
    tracing::info!("no longer accepting connections: finishing the requests under way");
    stop_accepting.cancel();
    serving.await
}

/// Once `closing` fires, every response asks its client to close the connection.
fn closing_connections_once(router: Router, closing: CancellationToken) -> Router {
    router.layer(axum::middleware::map_response(
        move |mut response: Response<Body>| {
            let closing = closing.is_cancelled();
            async move {
                if closing {
                    response.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                }
                response
            }
        },
    ))
}

async fn serve_until(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    cancel: CancellationToken,
    grace: Option<Duration>,
) -> std::io::Result<()> {
    // Fired when the grace runs out; only a server with a grace has one.
    let ending = grace.map(|_| CancellationToken::new());
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    // The deadlines are kept per connection (see the module header); no timer inside hyper.
    http.header_read_timeout(None);
    let mut connections = JoinSet::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // the semaphore is never closed
            },
            () = cancel.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = cancel.cancelled() => break,
        };
        let connection = serve_connection(
            stream,
            router.clone(),
            ending.clone(),
            http.clone(),
            limits,
            slot,
        );
        connections.spawn(connection.with_cancel(cancel.clone()));
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let (Some(grace), Some(ending)) = (grace, ending) else {
        join_all(&mut connections).await;
        return Ok(());
    };
    if tokio::time::timeout(grace, join_all(&mut connections))
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            grace_seconds = grace.as_secs_f64(),
            "the shutdown grace ran out: ending the requests still under way"
        );
        ending.cancel();
        if tokio::time::timeout(FLUSH_AFTER_GRACE, join_all(&mut connections))
            .await
            .is_err()
        {
            connections.abort_all();
            join_all(&mut connections).await;
        }
    }
    Ok(())
}

async fn join_all(connections: &mut JoinSet<()>) {
    while connections.join_next().await.is_some() {}
}

/// A failed accept: the peer gave up (go on), or the process is out of descriptors or memory
/// (pause briefly, since nothing announces when some are free again).
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if !matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        tracing::warn!(%error, "accepting a connection failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One connection, served until it ends or a deadline passes (dropping it closes the socket).
struct Connection {
    http: hyper::server::conn::http1::Connection<TokioIo<Watched>, Tracked>,
    activity: Arc<Activity>,
    limits: Limits,
    _slot: OwnedSemaphorePermit,
}

/// `ending` fires when the shutdown grace runs out (see [`Tracked`]).
fn serve_connection(
    stream: TcpStream,
    router: Router,
    ending: Option<CancellationToken>,
    http: hyper::server::conn::http1::Builder,
    limits: Limits,
    slot: OwnedSemaphorePermit,
) -> Connection {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new(Instant::now()));
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let service = Tracked {
        router: TowerToHyperService::new(router),
        activity: activity.clone(),
        ending,
    };
    Connection {
        http: http.serve_connection(io, service),
        activity,
        limits,
        _slot: slot,
    }
}

impl Connection {
    async fn with_cancel(self, cancel: CancellationToken) {
        let Connection {
            http,
            activity,
            limits,
            _slot,
        } = self;
        let mut http = std::pin::pin!(http);
        let mut draining = false;
        loop {
            tokio::select! {
                served = http.as_mut() => {
                    if let Err(error) = served {
                        tracing::debug!(%error, "connection ended");
                    }
                    return;
                }
                () = activity.expired(&limits) => {
                    tracing::debug!("closing a connection past its header or idle deadline");
                    return;
                }
                () = cancel.cancelled(), if !draining => {
                    http.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
        }
    }
}

/// Where a connection stands, which decides its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of the next request since then.
    Idle(Instant),
    /// Reading a request's header since then (since accept for the first request).
    Header(Instant),
    /// This many requests are being answered: no deadline.
    Busy(usize),
}

struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    fn new(accepted: Instant) -> Self {
        Activity {
            phase: Mutex::new(Phase::Header(accepted)),
            changed: Notify::new(),
        }
    }

    fn update(&self, change: impl FnOnce(Phase) -> Phase) {
        // The phase is a plain value: a panic elsewhere cannot leave it half-written.
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        let next = change(*phase);
        if next != *phase {
            *phase = next;
            self.changed.notify_one();
        }
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes arrived: an idle connection starts a request.
    fn received(&self) {
        self.update(|phase| match phase {
            Phase::Idle(_) => Phase::Header(Instant::now()),
            other => other,
        });
    }

    /// A request's header is complete; the connection is busy until the answer is sent.
    fn begin_request(self: &Arc<Self>) -> InFlight {
        self.update(|phase| match phase {
            Phase::Busy(requests) => Phase::Busy(requests + 1),
            _ => Phase::Busy(1),
        });
        InFlight(self.clone())
    }

    fn end_request(&self) {
        self.update(|phase| match phase {
            Phase::Busy(requests) if requests > 1 => Phase::Busy(requests - 1),
            _ => Phase::Idle(Instant::now()),
        });
    }

    /// Resolves when the connection is past its deadline.
    async fn expired(&self, limits: &Limits) {
        loop {
            let deadline = match self.phase() {
                Phase::Idle(since) => Some(since + limits.idle_timeout),
                Phase::Header(since) => Some(since + limits.header_timeout),
                Phase::Busy(_) => None,
            };
            // `notify_one` keeps a wake-up sent before this wait starts: no change is missed.
            match deadline {
                None => self.changed.notified().await,
                Some(deadline) => tokio::select! {
                    () = self.changed.notified() => {}
                    () = tokio::time::sleep_until(deadline) => return,
                },
            }
        }
    }
}

/// Held while a request is answered: until its response body is sent or dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

/// The socket, reporting received bytes to the connection's [`Activity`].
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.received();
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The router, marking each request in flight until its response body is done, and ending
/// the request when the shutdown grace runs out (`ending`, if the server has a grace).
#[derive(Clone)]
struct Tracked {
    router: TowerToHyperService<Router>,
    activity: Arc<Activity>,
    ending: Option<CancellationToken>,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<Guarded>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<Guarded>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin_request();
        let answer = self.router.call(request);
        let ending = self.ending.clone();
        Box::pin(async move {
            let response = match &ending {
                None => answer.await?,
                Some(ending) => tokio::select! {
                    answer = answer => answer?,
                    () = ending.cancelled() => grace_ran_out(),
                },
            };
            Ok(response.map(|body| Guarded {
                body,
                ending: ending.map_or(Ending::Never, Ending::Watch),
                _in_flight: in_flight,
            }))
        })
    }
}

/// The answer to a request the shutdown grace cut short: retryable, as nothing of an answer
/// was sent yet.
fn grace_ran_out() -> Response<Body> {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "1")],
        axum::Json(serde_json::json!({ "detail": GRACE_RAN_OUT })),
    )
        .into_response()
}

/// A response body that keeps its request in flight until it is sent or dropped, and is cut
/// off when the shutdown grace runs out while it waits for more to send.
struct Guarded {
    body: Body,
    ending: Ending,
    _in_flight: InFlight,
}

/// The shutdown grace, as a response body watches it.
enum Ending {
    /// The server has no grace.
    Never,
    /// Not waited on yet: most bodies are sent without ever waiting.
    Watch(CancellationToken),
    Waiting(Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>),
}

impl Ending {
    /// Whether the grace ran out; registers `cx` to learn when it does.
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> bool {
        if let Ending::Watch(token) = self {
            *self = Ending::Waiting(Box::pin(token.clone().cancelled_owned()));
        }
        match self {
            Ending::Waiting(wait) => wait.as_mut().poll(cx).is_ready(),
            Ending::Never | Ending::Watch(_) => false,
        }
    }
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if frame.is_pending() && this.ending.poll_ended(cx) {
            return Poll::Ready(Some(Err(axum::Error::new(GRACE_RAN_OUT))));
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests;
