//! The steady stream of async tasks a scenario runs under, sent as a careful client would: to
//! the gateways in service in turn, each submission under an `Idempotency-Key`, resent only
//! when the README says a resend is safe — a connection that failed or broke (to the next
//! gateway, same key), a 503 naming its task (under that task's id). Any other answer is final.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::support::API_KEY;
use crate::support::topology::Targets;

/// How long one submission keeps resending before it gives up.
const PATIENCE: Duration = Duration::from_secs(60);

/// What the client finally got for one submission of `x`.
#[derive(Debug)]
pub struct Submitted {
    pub x: u64,
    pub args: Value,
    pub outcome: Outcome,
    /// How often it was sent again.
    pub resent: u32,
}

#[derive(Debug)]
pub enum Outcome {
    Accepted(String),
    /// A final error answer: its status and body.
    Refused(u16, Value),
}

/// Submits `x` = 0, 1, … at `rate` per second for `length`, with `args_of(x)` as the args.
pub async fn steady(
    targets: Targets,
    endpoint: String,
    rate: u64,
    length: Duration,
    args_of: fn(u64) -> Value,
) -> Vec<Submitted> {
    let http = crate::support::http_client();
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut submissions = JoinSet::new();
    for x in 0..rate * length.as_secs() {
        ticks.tick().await;
        let (http, targets, endpoint) = (http.clone(), targets.clone(), endpoint.clone());
        submissions.spawn(async move { submit(&http, &targets, &endpoint, x, args_of(x)).await });
    }
    submissions.join_all().await
}

/// One submission, resent as long as resending is safe.
pub async fn submit(
    http: &reqwest::Client,
    targets: &Targets,
    endpoint: &str,
    x: u64,
    args: Value,
) -> Submitted {
    let body = json!({ "args": args });
    let mut key = format!("faults-{x}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut resent = 0;
    let outcome = loop {
        let base = targets.pick(x as usize + resent as usize);
        let request = http
            .post(format!(
                "{base}/v1/async-tasks?model_endpoint_id={endpoint}"
            ))
            .basic_auth(API_KEY, Some(""))
            .header("Idempotency-Key", &key)
            .json(&body);
        let answer = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                Some((status, response.json().await.unwrap_or(Value::Null)))
            }
            Err(_) => None,
        };
        match answer {
            Some((200, answer)) => {
                let task_id = answer["task_id"].as_str().unwrap_or_default();
                break Outcome::Accepted(task_id.to_owned());
            }
            Some((503, answer)) if answer["task_id"].is_string() => {
                key = answer["task_id"].as_str().unwrap_or_default().to_owned();
            }
            Some((status, answer)) => break Outcome::Refused(status, answer),
            // The gateway went away before answering: the same key to the next one.
            None => {}
        }
        if tokio::time::Instant::now() > deadline {
            break Outcome::Refused(0, json!("no answer within the client's patience"));
        }
        resent += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    Submitted {
        x,
        args: body["args"].clone(),
        outcome,
        resent,
    }
}
