//! Documented sizes end to end on a nats-server with its default 1 MiB `max_payload`: async
//! args and results up to 10 MiB through the queue, GET and the callback, a 2 MB sync request,
//! and a model answer above 10 MiB failing once with that reason.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const TASK_TIMEOUT: Duration = Duration::from_secs(60);
const MB: usize = 1_000_000;

/// A model that notes each run's tag in `runs` and answers the size and SHA-256 of its `blob`
/// arg, or a blob of `answer_bytes` when asked for one.
fn echo_model(runs: &Path) -> String {
    let handler = format!(
        r#"import hashlib
with open({runs:?}, "a") as f:
    f.write(args.get("tag", "") + "\n")
if "answer_bytes" in args:
    return 200, {{"blob": "y" * args["answer_bytes"]}}
blob = args.get("blob", "")
return 200, {{"size": len(blob), "sha256": hashlib.sha256(blob.encode()).hexdigest()}}"#,
        runs = runs.display().to_string()
    );
    python_bundle_yaml("echo", &handler)
}

fn runs_of(runs: &Path, tag: &str) -> usize {
    let text = std::fs::read_to_string(runs).unwrap_or_default();
    text.lines().filter(|line| *line == tag).count()
}

fn digest(blob: &str) -> String {
    Sha256::digest(blob.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Setup {
    _manifests: Manifests,
    runs: tempfile::TempDir,
    dev: Dev,
    receiver: Receiver,
    async_endpoint: String,
    sync_endpoint: String,
}

async fn setup() -> Setup {
    let receiver = Receiver::start().await;
    let runs = tempfile::tempdir().unwrap();
    let manifests = Manifests::with_example_bundle();
    manifests.add("echo.yaml", &echo_model(&runs.path().join("runs")));
    manifests.add(
        "large.yaml",
        &endpoint_yaml("large", "echo", &receiver.url("/cb"), ""),
    );
    manifests.add(
        "large-sync.yaml",
        "apiVersion: ferry.dev/v1alpha1\nkind: ModelEndpoint\nmetadata:\n  name: large-sync\nspec:\n  bundle: echo\n  endpointType: sync\n  labels: {team: t, product: p}\n",
    );
    // `ferry dev` starts its own nats-server, with the default `max_payload`.
    let dev = Dev::start(manifests.path(), None).await;
    let async_endpoint = dev.ready_endpoint("large").await;
    let sync_endpoint = dev.ready_endpoint("large-sync").await;
    Setup {
        _manifests: manifests,
        runs,
        dev,
        receiver,
        async_endpoint,
        sync_endpoint,
    }
}

impl Setup {
    fn runs(&self, tag: &str) -> usize {
        runs_of(&self.runs.path().join("runs"), tag)
    }

    /// Submits `args`, waits for the final record and the callback: both, and the time taken.
    async fn run(&self, args: Value) -> (Value, Value, Duration) {
        let started = Instant::now();
        let task = self
            .dev
            .submit(&self.async_endpoint, json!({ "args": args }))
            .await;
        let record = self.dev.finished_task(&task, TASK_TIMEOUT).await;
        let took = started.elapsed();
        let callback = eventually("its callback", TASK_TIMEOUT, || async {
            let received = self.receiver.received();
            received
                .into_iter()
                .find(|callback| callback.body["task_id"] == task.as_str())
        })
        .await;
        (record, callback.body, took)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn args_and_results_up_to_10_mib_work_through_a_default_nats_server() {
    let setup = setup().await;
    for (tag, size) in [("input-2mb", 2 * MB), ("input-9.5mb", 9 * MB + MB / 2)] {
        let blob = "x".repeat(size);
        let args = json!({ "tag": tag, "blob": blob });
        let (record, callback, took) = setup.run(args).await;
        let expected = json!({ "size": size, "sha256": digest(&blob) });
        assert_eq!(record["status"], "SUCCESS", "{tag}: {}", record["result"]);
        // Launch's task view wraps the model's answer as `{"result": …}`.
        assert_eq!(record["result"]["result"], expected, "{tag}");
        assert_eq!(callback["result"], expected, "{tag}");
        assert_eq!(setup.runs(tag), 1, "{tag} ran once");
        eprintln!("{tag}: submitted to SUCCESS in {took:?}");
    }

    let answer_bytes = 9 * MB + MB / 2;
    let args = json!({ "tag": "result-9.5mb", "answer_bytes": answer_bytes });
    let (record, callback, took) = setup.run(args).await;
    let expected = json!({ "blob": "y".repeat(answer_bytes) });
    assert_eq!(record["status"], "SUCCESS", "{}", record["result"]);
    assert!(
        record["result"]["result"] == expected,
        "the GET result is the answer"
    );
    assert!(callback["result"] == expected, "the callback is the answer");
    assert_eq!(setup.runs("result-9.5mb"), 1, "ran once");
    eprintln!("result-9.5mb: submitted to SUCCESS in {took:?}");

    let blob = "x".repeat(2 * MB);
    let path = format!("/v1/sync-tasks?model_endpoint_id={}", setup.sync_endpoint);
    let (status, answer) = setup
        .dev
        .post(
            &path,
            &json!({ "args": { "tag": "sync-2mb", "blob": blob } }),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["result"]["result"],
        json!({ "size": 2 * MB, "sha256": digest(&blob) })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_above_10_mib_fails_once_saying_so() {
    let setup = setup().await;
    let args = json!({ "tag": "result-11mb", "answer_bytes": 11 * MB });
    let (record, callback, _) = setup.run(args).await;
    assert_eq!(record["status"], "FAILURE");
    let reason = record["result"].as_str().unwrap_or_default();
    assert!(reason.contains("more than 10485760 bytes"), "{record}");
    assert_eq!(callback["status"], "FAILURE");
    assert_eq!(callback["error"]["message"], reason);
    assert_eq!(setup.runs("result-11mb"), 1, "ran once");
}
