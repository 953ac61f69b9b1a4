//! `ferry bench`'s own yardstick as a user runs it: `--jetstream-floor` starts its server, passes
//! every task through, and counts what it says it costs.

use serde_json::Value;

use crate::support::ferry_command;

#[tokio::test]
async fn the_jetstream_floor_passes_every_task_through_two_stored_messages() {
    let output = ferry_command()
        .args(["bench", "--jetstream-floor", "--tasks", "300"])
        .output()
        .await
        .expect("ferry runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ferry bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(report["finished"], 300, "{report}");
    assert_eq!(report["drained"], true, "{report}");
    // The server's own counters: a task and its outcome stored, nothing else.
    assert_eq!(report["nats_per_task"]["stored_messages"], 2.0, "{report}");
    let processes = report["processes"].as_array().expect("processes");
    let names: Vec<&str> = processes
        .iter()
        .filter_map(|process| process["process"].as_str())
        .collect();
    assert_eq!(names, ["nats-server", "ferry bench"], "{report}");
}
