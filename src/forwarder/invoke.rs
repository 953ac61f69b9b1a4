//! Calls the model container: waits for its health check, POSTs a task's args to the predict
//! route, and tells a model that answered (its result, or a failure a client can read) from a
//! model that could not take the task: refused the connection, or dropped it before a whole
//! answer. The second is an outage of the worker, not an outcome of the task. A prediction that
//! timed out is the task's failure: the model had it and did not finish it in time.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::bounded::read_bounded;
use super::input::{Fetched, InputFetcher};
use crate::task::{MAX_RESULT_BYTES, TaskError, TaskId, TaskMessage};
use crate::worker::{INPUT_URL_HEADER, TASK_ID_HEADER};

/// Model response bodies kept in a failure's detail are cut to this many bytes.
const DETAIL_LIMIT: usize = 4096;

/// A health probe waits this long for an answer (the kubelet's default probe timeout).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Connecting to the model takes a moment on one pod's loopback; longer means it is not there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First and longest pause between health probes of a model that stopped answering.
const PROBE_BACKOFF_FIRST: Duration = Duration::from_millis(100);
const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Pause between health probes of a starting model, for the first [`STARTING_FOR`]: a model
/// process usually answers within a fraction of a second of its start, the first task waits for
/// it, and a refused connection costs next to nothing.
const PROBE_PAUSE_STARTING: Duration = Duration::from_millis(20);
const STARTING_FOR: Duration = Duration::from_secs(2);

/// How a forwarder waits for its model's health route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probing {
    /// The model was just started: probe every [`PROBE_PAUSE_STARTING`] for [`STARTING_FOR`],
    /// then as when resuming.
    Starting,
    /// The model stopped answering: a doubling pause from [`PROBE_BACKOFF_FIRST`] up to
    /// [`PROBE_BACKOFF_MAX`], so a struggling model is not pressed.
    Resuming,
}

/// The pauses between failed health probes.
struct ProbeSchedule {
    probing: Probing,
    backoff: Duration,
}

impl ProbeSchedule {
    fn new(probing: Probing) -> Self {
        ProbeSchedule {
            probing,
            backoff: PROBE_BACKOFF_FIRST,
        }
    }

    /// The pause after a probe that failed `since_first` after the first probe.
    fn next_pause(&mut self, since_first: Duration) -> Duration {
        if self.probing == Probing::Starting && since_first < STARTING_FOR {
            return PROBE_PAUSE_STARTING;
        }
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(PROBE_BACKOFF_MAX);
        pause
    }
}

/// What the model made of a task.
#[derive(Debug, PartialEq)]
pub enum Prediction {
    Success {
        result: Value,
        status_code: u16,
    },
    Failure {
        error: TaskError,
        status_code: Option<u16>,
    },
    /// The model could not take the task: it gave no answer at all (why, in words).
    Unavailable {
        reason: String,
    },
}

/// What a prediction request carries: the task's args as JSON, or the input its URL held.
pub enum ModelInput<'a> {
    Args(&'a Value),
    Fetched { url: &'a str, input: Fetched },
}

impl<'a> From<&'a Value> for ModelInput<'a> {
    fn from(args: &'a Value) -> Self {
        ModelInput::Args(args)
    }
}

#[derive(Clone)]
pub struct ModelClient {
    http: reqwest::Client,
    /// Fetches the inputs of tasks given by URL; such tasks fail without one.
    inputs: Option<InputFetcher>,
    predict_url: Url,
    health_url: Url,
    /// Where streaming predictions come from, when the model offers them.
    streaming_url: Option<Url>,
    timeout: Duration,
    /// A further condition of readiness, asked once the health route has answered.
    ready_check: Option<ReadyCheck>,
}

/// Whether the model that answered is the one meant (see [`ModelClient::with_ready_check`]).
pub type ReadyCheck = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model route {route} does not form a URL with {base}")]
    Route {
        base: Url,
        route: String,
        #[source]
        source: url::ParseError,
    },
    #[error("building the HTTP client")]
    Client(#[source] reqwest::Error),
}

impl ModelClient {
    pub fn new(
        base: &Url,
        predict_route: &str,
        healthcheck_route: &str,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let join = |route: &str| {
            base.join(route).map_err(|source| Error::Route {
                base: base.clone(),
                route: route.into(),
                source,
            })
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(1024)
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            .map_err(Error::Client)?;
        Ok(ModelClient {
            http,
            inputs: None,
            predict_url: join(predict_route)?,
            health_url: join(healthcheck_route)?,
            streaming_url: None,
            timeout,
            ready_check: None,
        })
    }

    /// The same client, also calling the model's streaming route.
    pub fn with_streaming_route(mut self, route: Option<&str>) -> Result<Self, Error> {
        if let Some(route) = route {
            let base = self.predict_url.clone();
            let url = base.join(route).map_err(|source| Error::Route {
                base,
                route: route.into(),
                source,
            })?;
            self.streaming_url = Some(url);
        }
        Ok(self)
    }

    /// The same client, ready only when `check` also holds once the health route answers:
    /// `ferry dev` asks whether its own model process is the one listening there.
    pub fn with_ready_check(mut self, check: ReadyCheck) -> Self {
        self.ready_check = Some(check);
        self
    }

    /// The same client, fetching the inputs of tasks given by URL with `inputs`.
    pub fn with_inputs(mut self, inputs: InputFetcher) -> Self {
        self.inputs = Some(inputs);
        self
    }

    /// The task's input as the model gets it: its args, or what its URL holds (a fetch that
    /// fails is the task's failure: the model never saw it).
    async fn input_of<'a>(&self, task: &'a TaskMessage) -> Result<ModelInput<'a>, Prediction> {
        let Some(url) = task.input_url.as_deref() else {
            return Ok(ModelInput::Args(&task.args));
        };
        let Some(inputs) = &self.inputs else {
            let message = format!("input url {url:?}: this worker fetches no inputs by URL");
            return Err(failure(message, None, None));
        };
        match inputs.fetch(url).await {
            Ok(input) => Ok(ModelInput::Fetched { url, input }),
            // The reason is the traceback too: where Launch's clients look for why.
            Err(error) => Err(failure(error.to_string(), None, Some(error.to_string()))),
        }
    }

    /// The model's answer to `task`, its input fetched first when given by URL.
    pub async fn predict_task(&self, task: &TaskMessage) -> Prediction {
        match self.input_of(task).await {
            Ok(input) => self.predict(&task.task_id, input).await,
            Err(failed) => failed,
        }
    }

    /// The model's answers to `task` as they come, its input fetched first when given by URL.
    pub async fn stream_task(
        &self,
        task: &TaskMessage,
    ) -> futures::stream::BoxStream<'static, Prediction> {
        use futures::StreamExt;
        match self.input_of(task).await {
            Ok(input) => self.stream(&task.task_id, input).await,
            Err(failed) => futures::stream::once(futures::future::ready(failed)).boxed(),
        }
    }

    /// A POST of `input` to `url`, carrying the task's id.
    fn request(
        &self,
        url: &Url,
        task_id: &TaskId,
        input: ModelInput<'_>,
    ) -> reqwest::RequestBuilder {
        let request = self
            .http
            .post(url.clone())
            .header(TASK_ID_HEADER, task_id.as_str())
            .timeout(self.timeout);
        match input {
            ModelInput::Args(args) => request.json(args),
            ModelInput::Fetched { url, input } => request
                .header(INPUT_URL_HEADER, url)
                .header(reqwest::header::CONTENT_TYPE, input.content_type)
                .body(input.bytes),
        }
    }

    /// The model's answers as they come: each server-sent event of the streaming route, or the
    /// predict route's one answer when the model has no streaming route.
    pub async fn stream(
        &self,
        task_id: &TaskId,
        input: ModelInput<'_>,
    ) -> futures::stream::BoxStream<'static, Prediction> {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let Some(url) = &self.streaming_url else {
            let answer = self.predict(task_id, input).await;
            return futures::stream::once(futures::future::ready(answer)).boxed();
        };
        let response = match self.request(url, task_id, input).send().await {
            Ok(response) => response,
            Err(error) => {
                return futures::stream::once(futures::future::ready(self.unanswered(&error)))
                    .boxed();
            }
        };
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            let answer = failure(
                format!("model answered {status}"),
                Some(status.as_u16()),
                Some(truncated(&body)),
            );
            return futures::stream::once(futures::future::ready(answer)).boxed();
        }
        let code = status.as_u16();
        response
            .bytes_stream()
            .eventsource()
            .map(move |event| match event {
                Ok(event) => match serde_json::from_str(&event.data) {
                    Ok(result) => Prediction::Success {
                        result,
                        status_code: code,
                    },
                    Err(error) => failure(
                        format!("model streamed an event that is not JSON: {error}"),
                        Some(code),
                        Some(event.data),
                    ),
                },
                Err(error) => failure(
                    format!("reading the model's stream failed: {error}"),
                    Some(code),
                    None,
                ),
            })
            .boxed()
    }

    /// True when the health route answers 2xx within the probe timeout and the ready check, if
    /// any, holds.
    pub async fn is_ready(&self) -> bool {
        let probe = self
            .http
            .get(self.health_url.clone())
            .timeout(PROBE_TIMEOUT)
            .send()
            .await;
        probe.is_ok_and(|response| response.status().is_success())
            && self.ready_check.as_ref().is_none_or(|check| check())
    }

    /// Returns once the model is ready ([`Self::is_ready`]); `false` when cancelled first.
    /// Probes at once, then as `probing` says.
    pub async fn wait_until_ready(&self, cancel: &CancellationToken, probing: Probing) -> bool {
        let began = tokio::time::Instant::now();
        let mut logged = began;
        let mut schedule = ProbeSchedule::new(probing);
        loop {
            if self.is_ready().await {
                return true;
            }
            if logged.elapsed() > Duration::from_secs(10) {
                tracing::info!(url = %self.health_url, "waiting for the model to become ready");
                logged = tokio::time::Instant::now();
            }
            // The model offers no readiness notification: probe again shortly.
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(schedule.next_pause(began.elapsed())) => {}
            }
        }
    }

    pub async fn predict<'a>(
        &self,
        task_id: &TaskId,
        input: impl Into<ModelInput<'a>>,
    ) -> Prediction {
        let sent = self
            .request(&self.predict_url, task_id, input.into())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => return self.unanswered(&error),
        };
        let status = response.status();
        let body = match read_bounded(response, MAX_RESULT_BYTES).await {
            Ok(Some(body)) => body,
            Ok(None) => {
                let message = format!(
                    "model answered {status} with more than {MAX_RESULT_BYTES} bytes, the largest result ferry keeps"
                );
                return failure(message, Some(status.as_u16()), None);
            }
            Err(error) if error.is_timeout() => {
                return failure(self.describe(&error), Some(status.as_u16()), None);
            }
            // Cut off mid-answer: no answer, as when the connection drops before one.
            Err(error) => return self.unavailable(&error),
        };
        if !status.is_success() {
            return failure(
                format!("model answered {status}"),
                Some(status.as_u16()),
                Some(truncated(&body)),
            );
        }
        match serde_json::from_slice(&body) {
            Ok(result) => Prediction::Success {
                result,
                status_code: status.as_u16(),
            },
            Err(error) => failure(
                format!("model answered {status} with a body that is not JSON: {error}"),
                Some(status.as_u16()),
                Some(truncated(&body)),
            ),
        }
    }

    /// A request that brought no answer: the model was unavailable (refused or dropped the
    /// connection), or the task failed (it timed out, or the model redirected in a loop).
    fn unanswered(&self, error: &reqwest::Error) -> Prediction {
        // A connect that timed out is still a model that was not there.
        let failed = !error.is_connect() && (error.is_timeout() || error.is_redirect());
        if failed {
            failure(self.describe(error), None, None)
        } else {
            self.unavailable(error)
        }
    }

    fn unavailable(&self, error: &reqwest::Error) -> Prediction {
        Prediction::Unavailable {
            reason: self.describe(error),
        }
    }

    fn describe(&self, error: &reqwest::Error) -> String {
        if error.is_connect() {
            format!("model unreachable at {}", self.predict_url)
        } else if error.is_timeout() {
            format!(
                "model did not answer within {} s",
                self.timeout.as_secs_f64()
            )
        } else {
            format!(
                "the model gave no answer: {}",
                crate::telemetry::error_chain(error)
            )
        }
    }
}

fn failure(message: String, status_code: Option<u16>, detail: Option<String>) -> Prediction {
    Prediction::Failure {
        error: TaskError { message, detail },
        status_code,
    }
}

fn truncated(body: &[u8]) -> String {
    let cut = &body[..body.len().min(DETAIL_LIMIT)];
    String::from_utf8_lossy(cut).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_for(addr: std::net::SocketAddr, timeout: Duration) -> ModelClient {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base = Url::parse(&format!("http://{addr}")).expect("valid url");
        ModelClient::new(&base, "/predict", "/readyz", timeout).expect("client builds")
    }

    fn any_task() -> TaskId {
        TaskId::generate(&crate::crd::EndpointId::for_resource("default", "model"))
    }

    fn failure_message(prediction: Prediction) -> String {
        match prediction {
            Prediction::Failure { error, .. } => error.message,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_model_that_never_answers_times_out_as_a_failure() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("has an address");
        // Accept connections and hold them open without ever answering.
        let _silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let message = failure_message(
            client_for(addr, Duration::from_millis(200))
                .predict(&any_task(), &Value::Null)
                .await,
        );
        assert!(message.contains("did not answer within 0.2 s"), "{message}");
    }

    fn unavailable_reason(prediction: Prediction) -> String {
        match prediction {
            Prediction::Unavailable { reason } => reason,
            other => panic!("expected the model unavailable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_model_that_is_not_listening_is_unavailable_not_a_failure() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let reason = unavailable_reason(
            client_for(addr, Duration::from_secs(2))
                .predict(&any_task(), &Value::Null)
                .await,
        );
        assert!(reason.contains("model unreachable"), "{reason}");
    }

    /// Accepts connections on a free port and treats each with `answer`.
    async fn model_that<F, Fut>(answer: F) -> std::net::SocketAddr
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("has an address");
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(answer(socket));
            }
        });
        addr
    }

    async fn read_request(socket: &mut tokio::net::TcpStream) {
        use tokio::io::AsyncReadExt;
        let mut buffer = [0u8; 4096];
        let _ = socket.read(&mut buffer).await;
    }

    #[tokio::test]
    async fn a_model_that_drops_the_connection_before_answering_is_unavailable() {
        let addr = model_that(|mut socket| async move {
            read_request(&mut socket).await;
            // Closed with the request unanswered, as a killed model process leaves it.
            drop(socket);
        })
        .await;
        let reason = unavailable_reason(
            client_for(addr, Duration::from_secs(5))
                .predict(&any_task(), &Value::Null)
                .await,
        );
        assert!(reason.contains("gave no answer"), "{reason}");
    }

    /// A model whose health route answers is ready only if the further check holds too.
    #[tokio::test]
    async fn a_failed_ready_check_keeps_an_answering_model_unready() {
        let addr = model_that(|mut socket| async move {
            use tokio::io::AsyncWriteExt;
            read_request(&mut socket).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        })
        .await;
        let client = client_for(addr, Duration::from_secs(5));
        assert!(client.is_ready().await, "no check");
        let refused = client.clone().with_ready_check(Arc::new(|| false));
        assert!(!refused.is_ready().await, "the check fails");
        let passed = client.with_ready_check(Arc::new(|| true));
        assert!(passed.is_ready().await, "the check holds");
    }

    /// The prediction of a model that reads the request, writes `raw` and closes.
    async fn prediction_of_model_writing(raw: &'static str) -> Prediction {
        let addr = model_that(move |mut socket| async move {
            use tokio::io::AsyncWriteExt;
            read_request(&mut socket).await;
            let _ = socket.write_all(raw.as_bytes()).await;
        })
        .await;
        client_for(addr, Duration::from_secs(5))
            .predict(&any_task(), &Value::Null)
            .await
    }

    #[tokio::test]
    async fn a_model_cut_off_mid_answer_is_unavailable() {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"par";
        unavailable_reason(prediction_of_model_writing(head).await);
    }

    #[tokio::test]
    async fn a_model_answering_500_is_a_failure_with_its_answer() {
        let answer = "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nboom";
        let prediction = prediction_of_model_writing(answer).await;
        let Prediction::Failure { error, status_code } = prediction else {
            panic!("expected a failure, got {prediction:?}");
        };
        assert_eq!(status_code, Some(500));
        assert_eq!(error.message, "model answered 500 Internal Server Error");
        assert_eq!(error.detail.as_deref(), Some("boom"));
    }

    #[test]
    fn a_starting_model_is_probed_often_then_as_a_resuming_one() {
        let pauses = |probing, since_first_ms: &[u64]| {
            let mut schedule = ProbeSchedule::new(probing);
            since_first_ms
                .iter()
                .map(|&ms| schedule.next_pause(Duration::from_millis(ms)).as_millis())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pauses(Probing::Starting, &[0, 20, 1980, 2000, 2100, 2300]),
            vec![20, 20, 20, 100, 200, 400]
        );
        assert_eq!(
            pauses(Probing::Resuming, &[0, 100, 300, 700, 1500, 3100, 5100]),
            vec![100, 200, 400, 800, 1600, 2000, 2000]
        );
    }
}
