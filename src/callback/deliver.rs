//! One delivery attempt: POST the callback body with its headers and classify the answer.

use std::time::{Duration, Instant};

use reqwest::{StatusCode, header};

use super::schedule::Verdict;
use crate::task::{CallbackJob, DeliveryAttempt, now_ms};

/// Standard Webhooks header carrying an id that stays the same across retries.
pub const WEBHOOK_ID: &str = "webhook-id";
/// Standard Webhooks header carrying the attempt's Unix time in seconds.
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";

/// Error text kept on an attempt is cut to this many characters.
const ERROR_LIMIT: usize = 512;

#[derive(Clone, Copy, Debug)]
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

/// The HTTP client every delivery uses: no redirects, no proxies from the environment.
pub fn client(timeouts: Timeouts) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(timeouts.connect)
        .timeout(timeouts.total)
        .tcp_nodelay(true)
        .pool_max_idle_per_host(256)
        .build()
}

/// Posts the job's callback once.
pub async fn deliver_callback(
    http: &reqwest::Client,
    job: &CallbackJob,
) -> (Verdict, DeliveryAttempt) {
    let at_ms = now_ms();
    let started = Instant::now();
    let body = job.body().to_string();
    let sent = http
        .post(&job.target.url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(WEBHOOK_ID, job.task_id.as_str())
        .header(WEBHOOK_TIMESTAMP, (at_ms / 1000).to_string())
        .body(body)
        .send()
        .await;
    let (verdict, status_code, error) = match sent {
        Ok(response) => {
            let status = response.status();
            let retry_after = retry_after(response.headers());
            // Drain the body so the connection returns to the pool.
            let _ = response.bytes().await;
            (classify(status, retry_after), Some(status.as_u16()), None)
        }
        Err(error) => {
            let text: String = describe(&error).chars().take(ERROR_LIMIT).collect();
            (Verdict::Transient { retry_after: None }, None, Some(text))
        }
    };
    let attempt = DeliveryAttempt {
        at_ms,
        status_code,
        error,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    (verdict, attempt)
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

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        format!(
            "connection failed: {}",
            std::error::Error::source(error)
                .map(|s| s.to_string())
                .unwrap_or_default()
        )
    } else {
        error.to_string()
    }
}

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
