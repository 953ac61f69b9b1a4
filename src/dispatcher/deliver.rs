//! One delivery attempt: POST the callback body with its Standard Webhooks headers and the
//! receiver's credentials to the one address the attempt's lookup vetted ([`Destination`]),
//! and classify the answer. A receiver is not trusted: one deadline covers the whole exchange (lookup,
//! connect, headers, body), the response head is bounded, and no more than
//! [`RESPONSE_BODY_LIMIT`] bytes of the body are read.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{StatusCode, header};

use super::schedule::Verdict;
use crate::callback::guard::{self, Guard, Refusal, VettingResolver};
use crate::callback::sign::{self, SigningKey};
use crate::task::{CallbackAuth, CallbackJob, DeliveryAttempt, now_ms};

/// Standard Webhooks header carrying an id that stays the same across retries.
pub const WEBHOOK_ID: &str = "webhook-id";
/// Standard Webhooks header carrying the attempt's Unix time in seconds.
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";

/// Error text kept on an attempt is cut to this many characters.
const ERROR_LIMIT: usize = 512;
/// Response body bytes read at most: enough for a receiver's error details, and all a receiver
/// can make the dispatcher hold. The rest is never read; the connection is closed instead.
pub const RESPONSE_BODY_LIMIT: usize = 64 * 1024;
/// Response header lines accepted. The head's size is bounded as well, by hyper's read buffer
/// limit (about 400 KiB); a larger head fails the attempt.
const RESPONSE_HEADER_LIMIT: usize = 64;
/// Clients kept for distinct timeouts and client certificates before the cache starts over.
const MAX_CLIENTS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Timeouts {
    pub connect: Duration,
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            total: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the client certificate or key is not valid PEM")]
    Identity(#[source] reqwest::Error),
    #[error("building the HTTP client")]
    Build(#[source] reqwest::Error),
}

/// Where one attempt connects: the address vetted for the URL's host by the attempt's one
/// lookup. The attempt's client is given this address alone, so the address vetted is the
/// address reached — a second DNS answer cannot rebind the name — and the destination whose
/// concurrency bound the dispatcher holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    /// The URL's host when it is a name (a literal address is not looked up).
    name: Option<String>,
    pub addr: SocketAddr,
}

/// Looks up where `url` leads, once, and vets it: the first vetted address, or why the URL is
/// refused (any forbidden answer refuses the name).
pub async fn resolve_destination(guard: &Guard, url: &str) -> Result<Destination, Refusal> {
    let url = guard::check_syntax(url)?;
    // http and https have known ports.
    let port = url.port_or_known_default().unwrap_or(443);
    let literal = |ip: IpAddr| {
        guard.check_ip(ip)?;
        Ok(Destination {
            name: None,
            addr: SocketAddr::new(ip, port),
        })
    };
    match url.host().ok_or(Refusal::NoHost)? {
        url::Host::Ipv4(ip) => literal(ip.into()),
        url::Host::Ipv6(ip) => literal(ip.into()),
        url::Host::Domain(name) => {
            let vetted = guard.resolve(name, port).await?;
            let addr = vetted
                .first()
                .copied()
                .ok_or_else(|| Refusal::Unresolvable {
                    host: name.to_owned(),
                })?;
            Ok(Destination {
                name: Some(name.to_owned()),
                addr,
            })
        }
    }
}

/// HTTP clients for callbacks, one per distinct timeouts, client certificate and destination:
/// no redirects, no proxies from the environment, a name pinned to its vetted address (any
/// other name through the SSRF guard).
pub struct Clients {
    guard: Guard,
    extra_roots: Vec<reqwest::Certificate>,
    cache: Mutex<HashMap<u64, reqwest::Client>>,
}

impl Clients {
    pub fn new(guard: Guard, extra_roots: Vec<reqwest::Certificate>) -> Self {
        Clients {
            guard,
            extra_roots,
            cache: Mutex::default(),
        }
    }

    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    pub fn client(
        &self,
        timeouts: Timeouts,
        auth: Option<&CallbackAuth>,
        destination: &Destination,
    ) -> Result<reqwest::Client, ClientError> {
        let identity = match auth {
            Some(CallbackAuth::Mtls { cert, key }) => Some((cert.as_str(), key.as_str())),
            _ => None,
        };
        // A literal address needs no pin: one client serves them all.
        let pin = destination
            .name
            .as_deref()
            .map(|name| (name, destination.addr));
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (timeouts, identity, pin).hash(&mut hasher);
        let fingerprint = hasher.finish();
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = cache.get(&fingerprint) {
            return Ok(client.clone());
        }
        let client = self.build(timeouts, identity, pin)?;
        if cache.len() >= MAX_CLIENTS {
            cache.clear();
        }
        cache.insert(fingerprint, client.clone());
        Ok(client)
    }

    fn build(
        &self,
        timeouts: Timeouts,
        identity: Option<(&str, &str)>,
        pin: Option<(&str, SocketAddr)>,
    ) -> Result<reqwest::Client, ClientError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(VettingResolver(self.guard.clone())))
            .connect_timeout(timeouts.connect)
            .http1_max_headers(RESPONSE_HEADER_LIMIT)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(64);
        if let Some((name, addr)) = pin {
            builder = builder.resolve(name, addr);
        }
        if !self.extra_roots.is_empty() {
            builder = builder.tls_certs_merge(self.extra_roots.iter().cloned());
        }
        if let Some((cert, key)) = identity {
            let pem = format!("{cert}\n{key}");
            builder = builder.identity(
                reqwest::Identity::from_pem(pem.as_bytes()).map_err(ClientError::Identity)?,
            );
        }
        builder.build().map_err(ClientError::Build)
    }
}

/// What one attempt sends besides the job itself.
pub struct Request<'a> {
    pub clients: &'a Clients,
    /// The job's target URL, opened from its seal.
    pub url: &'a str,
    /// Where the URL led when the dispatcher looked it up for this attempt.
    pub destination: &'a Result<Destination, Refusal>,
    pub keys: &'a [SigningKey],
    pub auth: Option<&'a CallbackAuth>,
    pub allowed_hosts: &'a [String],
    /// `total` bounds the whole attempt, `connect` its connection (set on the client).
    pub timeouts: Timeouts,
}

/// Posts the job's callback once.
pub async fn deliver_callback(
    request: Request<'_>,
    job: &CallbackJob,
) -> (Verdict, DeliveryAttempt) {
    let at_ms = now_ms();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + request.timeouts.total;
    let exchange = tokio::time::timeout_at(deadline, attempt(&request, job, at_ms, deadline));
    let outcome = exchange
        .await
        .unwrap_or_else(|_| Err(Failure::Transport("timed out".to_owned())));
    let (verdict, status_code, error) = match outcome {
        Ok(answer) => (
            classify(answer.status, answer.retry_after),
            Some(answer.status.as_u16()),
            answer.body.note(),
        ),
        Err(Failure::Refused(refusal)) => {
            (Verdict::Refused, None, Some(format!("refused: {refusal}")))
        }
        Err(Failure::Unusable(text)) => (Verdict::Refused, None, Some(text)),
        Err(Failure::Transport(text)) => {
            (Verdict::Transient { retry_after: None }, None, Some(text))
        }
    };
    let error = error.map(|text| text.chars().take(ERROR_LIMIT).collect());
    let attempt = DeliveryAttempt {
        at_ms,
        status_code,
        error,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    (verdict, attempt)
}

enum Failure {
    Refused(Refusal),
    /// The endpoint's client settings cannot make a client.
    Unusable(String),
    Transport(String),
}

impl Failure {
    /// A slow DNS answer is retried like any other failed connection; other refusals stand.
    fn of_refusal(refusal: &Refusal) -> Failure {
        if refusal.is_transient() {
            Failure::Transport(refusal.to_string())
        } else {
            Failure::Refused(refusal.clone())
        }
    }
}

/// What a receiver answered; its body only matters as far as it was read.
struct Answer {
    status: StatusCode,
    retry_after: Option<Duration>,
    body: BodyRead,
}

/// How reading a response body ended. The status decides the verdict either way.
#[derive(Debug, PartialEq, Eq)]
enum BodyRead {
    Complete,
    /// More than [`RESPONSE_BODY_LIMIT`] bytes: reading stopped there.
    OverLimit,
    /// The deadline came first (a slow drip).
    Unfinished,
    /// The connection broke mid-body.
    Broken,
}

impl BodyRead {
    /// The note kept on the attempt.
    fn note(&self) -> Option<String> {
        match self {
            BodyRead::Complete => None,
            BodyRead::OverLimit => Some(format!(
                "response body larger than {} KiB; not read further",
                RESPONSE_BODY_LIMIT / 1024
            )),
            BodyRead::Unfinished => Some("response body unfinished at the deadline".to_owned()),
            BodyRead::Broken => Some("response body broken off".to_owned()),
        }
    }
}

/// Reads and discards the body up to [`RESPONSE_BODY_LIMIT`] bytes (give or take the chunk
/// that crosses it) until `deadline`. A complete body lets the connection return to the pool;
/// any other end drops the response, which closes the connection.
async fn read_body(mut response: reqwest::Response, deadline: tokio::time::Instant) -> BodyRead {
    let mut read = 0usize;
    loop {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Err(_) => return BodyRead::Unfinished,
            Ok(Err(_)) => return BodyRead::Broken,
            Ok(Ok(None)) => return BodyRead::Complete,
            Ok(Ok(Some(chunk))) => {
                read += chunk.len();
                if read > RESPONSE_BODY_LIMIT {
                    return BodyRead::OverLimit;
                }
            }
        }
    }
}

async fn attempt(
    request: &Request<'_>,
    job: &CallbackJob,
    at_ms: u64,
    deadline: tokio::time::Instant,
) -> Result<Answer, Failure> {
    let url = guard::check_syntax(request.url).map_err(Failure::Refused)?;
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
    if !guard::host_allowed(request.allowed_hosts, host) {
        return Err(Failure::Refused(Refusal::HostNotAllowed {
            host: host.to_owned(),
        }));
    }
    let destination = request.destination.as_ref().map_err(Failure::of_refusal)?;
    let client = request
        .clients
        .client(request.timeouts, request.auth, destination)
        .map_err(|error| Failure::Unusable(error.to_string()))?;
    let body = job.body().to_string();
    let timestamp = at_ms / 1000;
    let mut builder = client
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(WEBHOOK_ID, job.task_id.as_str())
        .header(WEBHOOK_TIMESTAMP, timestamp.to_string());
    if !request.keys.is_empty() {
        let signature = sign::sign(
            request.keys,
            job.task_id.as_str(),
            timestamp,
            body.as_bytes(),
        );
        builder = builder.header(sign::WEBHOOK_SIGNATURE, signature);
    }
    if let Some(CallbackAuth::Basic { username, password }) = request.auth {
        builder = builder.basic_auth(username, Some(password));
    }
    let response = builder
        .body(body)
        .send()
        .await
        .map_err(|error| classify_error(&error))?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = read_body(response, deadline).await;
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

pub fn classify(status: StatusCode, retry_after: Option<Duration>) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Delivered,
        410 => Verdict::Gone,
        408 | 429 | 500..=599 => Verdict::Transient { retry_after },
        _ => Verdict::Rejected,
    }
}

/// `Retry-After` in delta-seconds; HTTP dates are rare from webhook receivers and ignored.
fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn classify_error(error: &reqwest::Error) -> Failure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(refusal) = cause.downcast_ref::<Refusal>() {
            return Failure::of_refusal(refusal);
        }
        source = cause.source();
    }
    let text = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        format!(
            "connection failed: {}",
            crate::telemetry::error_chain(error)
        )
    } else {
        crate::telemetry::error_chain(error)
    };
    Failure::Transport(text)
}

#[cfg(test)]
mod hostile;
#[cfg(test)]
mod ssrf;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_classified_by_status() {
        assert_eq!(classify(StatusCode::NO_CONTENT, None), Verdict::Delivered);
        assert_eq!(classify(StatusCode::GONE, None), Verdict::Gone);
        assert_eq!(
            classify(StatusCode::BAD_GATEWAY, None),
            Verdict::Transient { retry_after: None }
        );
        assert_eq!(
            classify(StatusCode::REQUEST_TIMEOUT, None),
            Verdict::Transient { retry_after: None }
        );
        let later = Some(Duration::from_secs(30));
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, later),
            Verdict::Transient { retry_after: later }
        );
        assert_eq!(classify(StatusCode::NOT_FOUND, None), Verdict::Rejected);
        assert_eq!(classify(StatusCode::FOUND, None), Verdict::Rejected);
    }

    #[test]
    fn retry_after_reads_delta_seconds() {
        let mut headers = header::HeaderMap::new();
        headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("120"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(120)));
        headers.insert(
            header::RETRY_AFTER,
            header::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
