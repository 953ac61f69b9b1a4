//! What an operator sees in a role's log: the `ferry` binary with its stderr on a pipe, as in a
//! pod, while NATS is not there yet and once it comes up.

use std::process::Stdio;
use std::time::Duration;

use crate::support::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

/// Far longer than the lines take; only guards against a hang.
const PATIENCE: Duration = Duration::from_secs(25);

/// `ferry dispatcher` pointed at a NATS URL where nothing listens yet.
fn dispatcher(nats_url: &str, log_format: &str) -> (Child, Lines<BufReader<ChildStderr>>) {
    let mut child = ferry_command()
        .args(["dispatcher", "--nats-url", nats_url])
        .env("FERRY_SEAL_KEY_FILE", seal_key_file())
        .env("FERRY_LOG_FORMAT", log_format)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ferry binary starts");
    let lines = BufReader::new(child.stderr.take().expect("piped")).lines();
    (child, lines)
}

/// The next line of `lines` that `wanted` picks.
async fn line_where(
    lines: &mut Lines<BufReader<ChildStderr>>,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> String {
    tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.expect("stderr readable") {
            if wanted(&line) {
                return line;
            }
        }
        panic!("the log ended without {what}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} in the log"))
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_says_it_waits_for_nats_while_waiting_in_flat_json() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let (mut child, mut lines) = dispatcher(&url, "json");

    let waiting = line_where(&mut lines, "the waiting line", |line| {
        json(line)["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("waiting for NATS"))
    })
    .await;
    assert!(
        child.try_wait().expect("status").is_none(),
        "said while still waiting, not on giving up"
    );
    let waiting = json(&waiting);
    assert_eq!(waiting["message"], format!("waiting for NATS at {url}"));
    assert_eq!(
        waiting["url"],
        url.as_str(),
        "fields at the top level: {waiting}"
    );
    assert_eq!(waiting["level"], "WARN");

    let store = tempfile::tempdir().expect("store dir");
    let _nats = Command::new("nats-server")
        .args([
            "--jetstream",
            "--addr",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .arg("--store_dir")
        .arg(store.path())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nats-server on PATH (scripts/setup)");
    let connected = line_where(&mut lines, "the connected line", |line| {
        json(line)["message"] == "connected to NATS"
    })
    .await;
    assert_eq!(json(&connected)["url"], url.as_str());
    assert!(child.try_wait().expect("status").is_none(), "still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_on_a_pipe_have_no_colour_codes() {
    let url = format!("nats://127.0.0.1:{}", free_port());
    let (_child, mut lines) = dispatcher(&url, "text");
    let waiting = line_where(&mut lines, "the waiting line", |line| {
        line.contains("waiting for NATS at")
    })
    .await;
    assert!(waiting.contains(&url), "{waiting}");
    assert!(!waiting.contains('\x1b'), "no ANSI escapes: {waiting:?}");
}
