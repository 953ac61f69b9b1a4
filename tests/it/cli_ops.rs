//! The command line against a running gateway, as a user runs it: `ferry tasks …` and
//! `ferry callbacks …` with the API key from the environment, and `ferry completions`.

use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);
const ENDPOINT: &str = "demo-endpoint-callback";

/// `ferry ARGS` against `dev`, with `key` (when given) in `FERRY_API_KEY`.
async fn ferry(dev: &Dev, key: Option<&str>, args: &[&str]) -> Output {
    let mut command = ferry_command();
    command.args(args).env("FERRY_GATEWAY_URL", &dev.base);
    if let Some(key) = key {
        command.env("FERRY_API_KEY", key);
    }
    command.output().await.expect("ferry runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The JSON a successful `--output json` command printed.
fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "ferry failed: {}",
        text(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {}", text(&output.stdout)))
}

#[tokio::test]
async fn tasks_and_callbacks_commands_read_and_act_on_a_running_gateway() {
    let dev = Dev::start(&examples_dir(), None).await;
    let endpoint_id = dev.ready_endpoint(ENDPOINT).await;
    let receiver = Receiver::start().await;
    let task = json!({"args": {"x": 2, "y": "hello"}, "callback_url": receiver.url("/done")});
    let task_id = dev.submit(&endpoint_id, task).await;
    let finished = dev.finished_task(&task_id, WAIT).await;
    assert_eq!(finished["status"], "SUCCESS", "{finished}");

    let get = ["tasks", "get", task_id.as_str()];
    let task = json_of(
        &ferry(
            &dev,
            Some(API_KEY),
            &[&get[..], &["--output", "json"]].concat(),
        )
        .await,
    );
    assert_eq!(task["task_id"], task_id.as_str());
    assert_eq!(task["status"], "SUCCESS");
    assert_eq!(task["result"], finished["result"]);
    let table = ferry(&dev, Some(API_KEY), &get).await;
    assert!(table.status.success(), "{}", text(&table.stderr));
    let table = text(&table.stdout);
    assert!(
        table.contains(&task_id) && table.contains("SUCCESS"),
        "{table}"
    );

    // Listed by the endpoint's name; a status filter that excludes it lists nothing.
    let list = [
        "tasks",
        "list",
        "--model-endpoint",
        ENDPOINT,
        "--output",
        "json",
    ];
    let page = json_of(&ferry(&dev, Some(API_KEY), &list).await);
    let listed: Vec<&str> = page["tasks"]
        .as_array()
        .expect("a page of tasks")
        .iter()
        .map(|task| task["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [task_id.as_str()], "{page}");
    let failures = [&list[..], &["--status", "FAILURE"]].concat();
    let page = json_of(&ferry(&dev, Some(API_KEY), &failures).await);
    assert_eq!(page["tasks"], json!([]), "{page}");

    // A finished task cannot be cancelled: the command fails with the gateway's reason.
    let cancel = ferry(&dev, Some(API_KEY), &["tasks", "cancel", &task_id]).await;
    assert!(!cancel.status.success(), "{}", text(&cancel.stdout));
    assert!(
        text(&cancel.stderr).contains("409"),
        "{}",
        text(&cancel.stderr)
    );
    assert_eq!(dev.task(&task_id).await["status"], "SUCCESS");

    let letters = [
        "callbacks",
        "dead-letters",
        "--model-endpoint",
        ENDPOINT,
        "--output",
        "json",
    ];
    let page = json_of(&ferry(&dev, Some(API_KEY), &letters).await);
    assert_eq!(page["dead_letters"], json!([]), "{page}");

    // Without the variable the command names it instead of calling the gateway unauthenticated.
    let keyless = ferry(&dev, None, &["tasks", "get", &task_id]).await;
    assert!(!keyless.status.success());
    assert!(
        text(&keyless.stderr).contains("FERRY_API_KEY"),
        "{}",
        text(&keyless.stderr)
    );
}

#[tokio::test]
async fn completions_are_printed_for_each_shell_and_a_closed_pipe_is_no_error() {
    for shell in ["bash", "zsh", "fish"] {
        let output = ferry_command()
            .args(["completions", shell])
            .output()
            .await
            .expect("ferry runs");
        assert!(output.status.success(), "{shell}: {}", text(&output.stderr));
        let script = text(&output.stdout);
        assert!(
            script.contains("tasks") && script.contains("dead-letters"),
            "{shell}: {script}"
        );
    }
    // As `ferry completions bash | head -1` does: the reader is gone before the script is written.
    let mut child = ferry_command()
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry runs");
    drop(child.stdout.take());
    let output = child.wait_with_output().await.expect("ferry exits");
    assert!(output.status.success(), "{}", text(&output.stderr));
}
