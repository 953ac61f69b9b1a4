//! Rolling a gateway: a stopping `ferry gateway` reports not ready at once, keeps serving for
//! its shutdown delay, then accepts nothing new and finishes the requests under way — or, past
//! its shutdown grace, answers them 503 with `Retry-After` — and exits. The request held in
//! flight is a task submission whose body the test is still sending, so the test decides when
//! it may complete; every assertion is about order and outcome.

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Long enough never to decide a test; only stops a broken one from hanging.
const HANG: Duration = Duration::from_secs(60);

/// An async task submission sent up to half its body: in flight until [`Self::finish`].
struct HeldSubmission {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl HeldSubmission {
    async fn begin(base: &str, endpoint: &str) -> HeldSubmission {
        let addr = base.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).await.expect("gateway accepts");
        let body = json!({"args": {"x": 21}}).to_string().into_bytes();
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{API_KEY}:"));
        let head = format!(
            "POST /v1/async-tasks?model_endpoint_id={endpoint} HTTP/1.1\r\nHost: gateway\r\n\
             Authorization: Basic {auth}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        let (sent, rest) = body.split_at(body.len() / 2);
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(sent).await.unwrap();
        HeldSubmission {
            stream,
            rest: rest.to_vec(),
        }
    }

    /// Sends the rest of the body and reads the answer.
    async fn finish(mut self) -> Answered {
        self.stream.write_all(&self.rest).await.unwrap();
        self.answer().await
    }

    /// Reads the answer to what was sent so far (the connection is closed after it).
    async fn answer(mut self) -> Answered {
        let mut raw = Vec::new();
        tokio::time::timeout(HANG, self.stream.read_to_end(&mut raw))
            .await
            .expect("answered")
            .unwrap();
        Answered::parse(&String::from_utf8_lossy(&raw))
    }
}

struct Answered {
    status: u16,
    /// Header lines, lower-cased.
    headers: Vec<String>,
    body: Value,
}

impl Answered {
    fn parse(raw: &str) -> Answered {
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("an HTTP answer, not {raw:?}"));
        Answered {
            status,
            headers: lines.map(str::to_ascii_lowercase).collect(),
            body: serde_json::from_str(body).unwrap_or(Value::Null),
        }
    }
}

async fn readyz(gateway: &Dev) -> Option<u16> {
    let url = format!("{}/readyz", gateway.base);
    let response = gateway.http.get(url).send().await.ok()?;
    Some(response.status().as_u16())
}

/// A gateway with these shutdown `delay` and `grace` seconds, serving an async endpoint `held`
/// whose tasks stay queued (no worker runs them); its endpoint id.
async fn start(delay: &str, grace: &str) -> (Nats, Manifests, Dev, String) {
    let nats = Nats::start().await;
    let manifests = Manifests::with_example_bundle();
    manifests.add(
        "held.yaml",
        &endpoint_yaml("held", "test-bundle", "http://127.0.0.1:9/cb", ""),
    );
    let settings = [
        ("FERRY_GATEWAY_SHUTDOWN_DELAY_SECONDS", delay),
        ("FERRY_GATEWAY_REQUEST_GRACE_SECONDS", grace),
    ];
    let gateway = Dev::static_gateway_with(manifests.path(), &nats.url, &settings).await;
    let endpoint = gateway.endpoint_id("held").await;
    (nats, manifests, gateway, endpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_gateway_turns_unready_keeps_serving_then_finishes_what_it_holds() {
    let (nats, manifests, mut gateway, endpoint) = start("10", "600").await;
    let held = HeldSubmission::begin(&gateway.base, &endpoint).await;

    gateway.process.signal("-TERM");
    eventually("/readyz answers 503", HANG, || async {
        (readyz(&gateway).await == Some(503)).then_some(())
    })
    .await;
    // Within the delay a new request on a new connection is served as ever.
    let served = gateway.submit(&endpoint, json!({"args": {"x": 1}})).await;

    // Then it accepts no connection, while it still holds the submission.
    let addr = gateway.base.trim_start_matches("http://").to_owned();
    eventually("new connections refused", HANG, || async {
        TcpStream::connect(&addr).await.is_err().then_some(())
    })
    .await;
    assert!(
        gateway.process.child.try_wait().unwrap().is_none(),
        "the gateway waits for the request it holds"
    );
    let answered = held.finish().await;
    assert_eq!(answered.status, 200, "{}", answered.body);
    let held_task = answered.body["task_id"]
        .as_str()
        .expect("a task id")
        .to_owned();
    let exit = gateway.process.wait_exit(HANG).await;
    assert!(exit.success(), "the gateway exits cleanly: {exit}");

    // Both submissions were taken: the replacement gateway finds them queued.
    let replacement = Dev::static_gateway(manifests.path(), &nats.url).await;
    for task in [served, held_task] {
        assert_eq!(replacement.task(&task).await["status"], "PENDING", "{task}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_still_under_way_when_the_grace_runs_out_gets_a_retryable_503() {
    let (_nats, _manifests, mut gateway, endpoint) = start("2", "1").await;
    let held = HeldSubmission::begin(&gateway.base, &endpoint).await;

    gateway.process.signal("-TERM");
    // The rest of the body never comes: the grace runs out with the request under way.
    let answered = held.answer().await;
    assert_eq!(answered.status, 503, "{}", answered.body);
    assert!(
        answered
            .headers
            .iter()
            .any(|h| h.starts_with("retry-after:")),
        "{:?}",
        answered.headers
    );
    let detail = answered.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("send it again"), "{}", answered.body);
    let exit = gateway.process.wait_exit(HANG).await;
    assert!(exit.success(), "the gateway exits cleanly: {exit}");
}
