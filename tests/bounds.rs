//! Fairness and bounds end to end: one endpoint's callbacks to hanging receivers hold no more
//! than their caps while another endpoint's callbacks keep flowing.

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::AsyncReadExt;

const WAIT: Duration = Duration::from_secs(60);

/// A receiver that takes connections on several loopback addresses and never answers: it
/// counts the requests it holds per address, now and at most.
#[derive(Clone, Default)]
struct Hanging {
    counts: Arc<Mutex<HashMap<IpAddr, (usize, usize)>>>,
}

impl Hanging {
    async fn start(addresses: &[IpAddr], port: u16) -> Hanging {
        let hanging = Hanging::default();
        for ip in addresses {
            let listener = tokio::net::TcpListener::bind(SocketAddr::new(*ip, port))
                .await
                .expect("hanging receiver binds");
            let hanging = hanging.clone();
            tokio::spawn(async move {
                while let Ok((mut connection, _)) = listener.accept().await {
                    let hanging = hanging.clone();
                    let ip = connection.local_addr().unwrap().ip();
                    tokio::spawn(async move {
                        hanging.change(ip, true);
                        let mut buffer = [0u8; 4096];
                        while matches!(connection.read(&mut buffer).await, Ok(n) if n > 0) {}
                        hanging.change(ip, false);
                    });
                }
            });
        }
        hanging
    }

    fn change(&self, ip: IpAddr, opened: bool) {
        let mut counts = self.counts.lock().unwrap();
        let (now, most) = counts.entry(ip).or_default();
        if opened {
            *now += 1;
            *most = (*most).max(*now);
        } else {
            *now -= 1;
        }
    }

    /// Requests held now, over all addresses.
    fn held(&self) -> usize {
        self.counts
            .lock()
            .unwrap()
            .values()
            .map(|(now, _)| now)
            .sum()
    }

    /// The most requests held at once by any one address.
    fn most_at_one_address(&self) -> usize {
        let counts = self.counts.lock().unwrap();
        counts.values().map(|(_, most)| *most).max().unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_many_names_for_hanging_receivers_holds_no_more_than_its_caps() {
    const PER_DESTINATION: usize = 2;
    const PER_ENDPOINT: usize = 5;
    let port = free_port();
    // Every name of `one` leads to 127.0.0.2; the names of `spread` to eight addresses.
    let one: Vec<String> = (0..12).map(|i| format!("one{i}.hooks.test")).collect();
    let spread: Vec<(String, IpAddr)> = (0..16)
        .map(|i| {
            let ip = IpAddr::from([127, 0, 0, 3 + (i % 8) as u8]);
            (format!("spread{i}.hooks.test"), ip)
        })
        .collect();
    let mut addresses: Vec<IpAddr> = spread.iter().map(|(_, ip)| *ip).collect();
    addresses.push(IpAddr::from([127, 0, 0, 2]));
    addresses.sort();
    addresses.dedup();
    let hanging = Hanging::start(&addresses, port).await;
    let fast = Receiver::start().await;

    let resolve: Vec<String> = one
        .iter()
        .map(|name| format!("{name}=127.0.0.2"))
        .chain(spread.iter().map(|(name, ip)| format!("{name}={ip}")))
        .collect();
    let resolve = resolve.join(",");
    let per_host = PER_DESTINATION.to_string();
    let per_endpoint = PER_ENDPOINT.to_string();
    let flags = [
        "--callback-resolve",
        &resolve,
        "--per-host-concurrency",
        &per_host,
        "--per-endpoint-concurrency",
        &per_endpoint,
        "--dispatch-concurrency",
        "64",
    ];
    let hang_long = "  callbacks:\n    attemptTimeoutSeconds: 300\n";
    let manifests = Manifests::with_example_bundle();
    for name in ["one", "spread"] {
        let default_url = format!("http://{name}0.hooks.test:{port}/cb");
        manifests.add(
            &format!("{name}.yaml"),
            &endpoint_yaml(name, "test-bundle", &default_url, hang_long),
        );
    }
    manifests.add(
        "calm.yaml",
        &endpoint_yaml("calm", "test-bundle", &fast.url("/cb"), ""),
    );
    let dev = Dev::start_with(manifests.path(), None, &flags).await;
    let (one_id, spread_id, calm_id) = (
        dev.ready_endpoint("one").await,
        dev.ready_endpoint("spread").await,
        dev.ready_endpoint("calm").await,
    );

    let urls = |names: Vec<String>| {
        names
            .into_iter()
            .map(|name| format!("http://{name}:{port}/cb"))
    };
    for url in urls(one.clone()) {
        dev.submit(
            &one_id,
            json!({"args": {"x": 1, "y": ""}, "callback_url": url}),
        )
        .await;
    }
    for url in urls(spread.iter().map(|(name, _)| name.clone()).collect()) {
        dev.submit(
            &spread_id,
            json!({"args": {"x": 1, "y": ""}, "callback_url": url}),
        )
        .await;
    }
    // Both tenants fill their share of the hanging receivers...
    eventually("the hanging receivers hold their caps", WAIT, || async {
        (hanging.held() == PER_DESTINATION + PER_ENDPOINT).then_some(())
    })
    .await;
    // ...and another endpoint's callbacks are delivered meanwhile.
    let calm_tasks = 20;
    for x in 0..calm_tasks {
        dev.submit(&calm_id, json!({"args": {"x": x, "y": ""}}))
            .await;
    }
    fast.wait_for(calm_tasks, WAIT).await;

    assert_eq!(
        hanging.held(),
        PER_DESTINATION + PER_ENDPOINT,
        "`one` holds its destination's cap, `spread` its endpoint's cap"
    );
    assert_eq!(
        hanging.most_at_one_address(),
        PER_DESTINATION,
        "twelve names for one address share that address's cap"
    );
    let at_one = hanging.counts.lock().unwrap()[&IpAddr::from([127, 0, 0, 2])].1;
    assert_eq!(at_one, PER_DESTINATION);
}
