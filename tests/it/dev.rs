//! `ferry dev` as a process: what it starts ends with it, however it ends.

use std::time::Duration;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_ferry_dev_takes_its_nats_server_and_model_processes_with_it() {
    let manifests = Manifests::with_example_bundle();
    manifests.add(
        "endpoint.yaml",
        &endpoint_yaml("demo", "test-bundle", "http://127.0.0.1:9/cb", ""),
    );
    let mut dev = Dev::start(manifests.path(), None).await;
    dev.ready_endpoint("demo").await;
    let pid = dev.process.pid();
    let nats_servers = children_named(pid, "nats-server");
    let models = children_named(pid, "python3");
    assert_eq!(
        (nats_servers.len(), models.len()),
        (1, 1),
        "ferry dev runs one nats-server and one model"
    );

    dev.process.signal("-KILL");
    dev.process.wait_exit(WAIT).await;
    for child in nats_servers.iter().chain(&models) {
        eventually(&format!("process {child} gone"), WAIT, || async {
            has_exited(*child).then_some(())
        })
        .await;
    }
}
