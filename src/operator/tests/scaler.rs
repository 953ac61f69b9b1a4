//! Autoscaler scenarios against the scripted API server: the scale apply, then the Event, then
//! the status apply of each change, in that order, and nothing while the count holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use http::Method;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::{reflector, watcher};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::super::fixtures::{ApiServer, Expected, bundle, endpoint, finalized, validated};
use super::super::scaler::{self, Tracked};
use super::{STATUS, start_nats, submit};
use crate::autoscale::{AutoscaleMetrics, Concurrency, Load};
use crate::crd::{EndpointType, ModelEndpoint, ModelEndpointStatus};
use crate::operator::context::Context;
use crate::queue::LoadReport;
use crate::queue::QueueSpec;

const SCALE: &str = "/apis/apps/v1/namespaces/ml/deployments/demo/scale";

fn metrics() -> (Registry, Arc<AutoscaleMetrics>) {
    let mut registry = Registry::default();
    let metrics = AutoscaleMetrics::register(&mut registry);
    (registry, metrics)
}

fn exposition(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encodes");
    text
}

fn scaled(endpoint_type: EndpointType, min: u32, max: u32, per_worker: u32) -> ModelEndpoint {
    let mut endpoint = finalized(endpoint());
    endpoint.spec.endpoint_type = endpoint_type;
    (
        endpoint.spec.min_workers,
        endpoint.spec.max_workers,
        endpoint.spec.per_worker,
    ) = (min, max, per_worker);
    endpoint
}

/// Status as the reconciler left it for an endpoint idling at zero workers.
fn idle_status() -> ModelEndpointStatus {
    ModelEndpointStatus {
        desired_replicas: Some(0),
        ready_replicas: Some(0),
        ..Default::default()
    }
}

/// The query of the autoscaler's server-side applies.
const APPLY_SCALE: &str = "fieldManager=ferry-autoscaler&force=true";

/// Serves the autoscaler's apply of `replicas` to the scale subresource.
async fn serve_scale(server: &mut ApiServer, replicas: u32) {
    let scale =
        json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": replicas}});
    let expected = Expected::new(Method::PATCH, SCALE, scale).query(APPLY_SCALE);
    server
        .expect(expected)
        .await
        .ok(&json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": "demo", "namespace": "ml"}, "spec": {"replicas": replicas}}));
}

/// Serves the Event the autoscaler creates for a change.
async fn serve_event(server: &mut ApiServer, reason: &str, note: &str) {
    let expected = Expected::event("Scale", "Normal", reason, note);
    server.expect_echoed(expected).await;
}

/// Serves the autoscaler's status apply, which carries only its own fields: the reason, and
/// the time of the change when the count changed.
async fn serve_scale_status(
    server: &mut ApiServer,
    endpoint: &ModelEndpoint,
    reason: &str,
    changed: bool,
) {
    let mut status = json!({"scaleReason": reason});
    let mut expected_volatile: &[&str] = &[];
    if changed {
        status["lastScaleTime"] = json!("the time of the change");
        expected_volatile = &["/status/lastScaleTime"];
    }
    let body =
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "ModelEndpoint", "status": status});
    let expected = Expected::new(Method::PATCH, STATUS, body)
        .query(APPLY_SCALE)
        .volatile(expected_volatile);
    let seen = server.expect(expected).await;
    let mut stored = serde_json::to_value(endpoint).expect("json");
    stored["status"] = seen.body["status"].clone();
    seen.ok(&stored);
}

/// Waits until the registry's exposition satisfies `holds` (the loop runs every second).
async fn exposition_until(registry: &Registry, holds: impl Fn(&str) -> bool) -> String {
    for _ in 0..100 {
        let text = exposition(registry);
        if holds(&text) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the exposition never came to hold: {}",
        exposition(registry)
    )
}

/// Evaluates `endpoint` at `load` in the background, as the loop does.
fn evaluate(
    ctx: &Arc<Context>,
    metrics: &Arc<AutoscaleMetrics>,
    endpoint: &ModelEndpoint,
    tracked: Tracked,
    load: Load,
) -> tokio::task::JoinHandle<Tracked> {
    let (ctx, metrics, endpoint) = (ctx.clone(), metrics.clone(), endpoint.clone());
    tokio::spawn(async move {
        let mut tracked = tracked;
        scaler::evaluate(&ctx, &metrics, &endpoint, &mut tracked, load).await;
        tracked
    })
}

#[tokio::test]
async fn the_autoscaler_sets_the_scale_subresource_from_the_backlog() {
    let (nats, queue) = start_nats().await;
    let (ctx, mut server) = super::context(&nats.connection);
    let (registry, metrics) = metrics();
    let endpoint = scaled(EndpointType::Async, 0, 3, 2);
    queue
        .gateway()
        .open_task_queue(&QueueSpec::for_endpoint(&validated(&endpoint, &bundle())))
        .await
        .expect("queue");
    let observe = || {
        let (queue, endpoint) = (queue.clone(), endpoint.clone());
        async move {
            let mut board = Concurrency::default();
            scaler::observe_load(&queue.operator(), &mut board, &endpoint, Instant::now())
                .await
                .expect("the queue exists")
        }
    };

    // Idle: zero workers, and the status says why, though nothing changed.
    let load = observe().await;
    let running = evaluate(
        &ctx,
        &metrics,
        &endpoint,
        Tracked::new(Duration::from_secs(60)),
        load,
    );
    serve_scale(&mut server, 0).await;
    serve_scale_status(&mut server, &endpoint, "Idle", false).await;
    let tracked = server.idle_after(running).await.expect("evaluated");
    assert_eq!(tracked.applied(), Some(0));

    // Five queued tasks at two per worker want three workers.
    for _ in 0..5 {
        submit(&queue, &endpoint).await;
    }
    let load = observe().await;
    assert_eq!(
        load,
        Load {
            queued: 5,
            in_flight: 0
        }
    );
    let running = evaluate(&ctx, &metrics, &endpoint, tracked, load);
    serve_scale(&mut server, 3).await;
    let note = "0 → 3 workers: Load (5 queued, 0 in flight)";
    serve_event(&mut server, "ScaledUp", note).await;
    serve_scale_status(&mut server, &endpoint, "Load", true).await;
    let tracked = server.idle_after(running).await.expect("evaluated");

    // Unchanged load: nothing to set, nothing to tell.
    let running = evaluate(&ctx, &metrics, &endpoint, tracked, load);
    let tracked = server.idle_after(running).await.expect("evaluated");
    assert_eq!(tracked.applied(), Some(3));
    let text = exposition(&registry);
    assert!(
        text.contains(&format!(
            r#"ferry_autoscaler_desired_workers{{endpoint="ml/demo",endpoint_id="{id}"}} 3"#,
            id = endpoint.endpoint_id()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            r#"ferry_autoscaler_ready_workers{{endpoint="ml/demo",endpoint_id="{id}"}} 0"#,
            id = endpoint.endpoint_id()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            r#"ferry_queue_backlog_tasks{{endpoint="ml/demo",endpoint_id="{id}"}} 5"#,
            id = endpoint.endpoint_id()
        )),
        "{text}"
    );
}

#[tokio::test]
async fn a_sync_endpoint_wakes_at_its_first_load_report_and_times_the_wake() {
    let (nats, queue) = start_nats().await;
    let (ctx, mut server) = super::context(&nats.connection);
    let (registry, metrics) = metrics();
    let mut endpoint = scaled(EndpointType::Sync, 0, 4, 2);
    endpoint.status = Some(idle_status());

    // A gateway's report, through NATS, onto the board.
    let mut reports = queue
        .operator()
        .load_reports(None)
        .await
        .expect("subscribed")
        .boxed();
    let report = LoadReport {
        endpoint: endpoint.endpoint_id(),
        source: "gateway-1".into(),
        in_flight: 3,
    };
    queue
        .gateway()
        .publish_load(&report)
        .await
        .expect("published");
    let received = tokio::time::timeout(Duration::from_secs(5), reports.next())
        .await
        .expect("a report arrives")
        .expect("the subscription lives");
    let mut board = Concurrency::default();
    board.record(received, Instant::now());
    let load = scaler::observe_load(&queue.operator(), &mut board, &endpoint, Instant::now())
        .await
        .expect("sync endpoints always have a load");
    assert_eq!(
        load,
        Load {
            queued: 0,
            in_flight: 3
        }
    );

    // No window: scale-down is immediate, so the test can go back to zero.
    let running = evaluate(
        &ctx,
        &metrics,
        &endpoint,
        Tracked::new(Duration::ZERO),
        load,
    );
    serve_scale(&mut server, 2).await;
    let note = "0 → 2 workers: Load (0 queued, 3 in flight)";
    serve_event(&mut server, "ScaledUp", note).await;
    serve_scale_status(&mut server, &endpoint, "Load", true).await;
    let tracked = server.idle_after(running).await.expect("evaluated");

    // The first worker is ready: the wake is timed, once.
    endpoint.status = Some(ModelEndpointStatus {
        desired_replicas: Some(2),
        ready_replicas: Some(1),
        ..Default::default()
    });
    let running = evaluate(&ctx, &metrics, &endpoint, tracked, load);
    let tracked = server.idle_after(running).await.expect("evaluated");
    let text = exposition(&registry);
    assert!(
        text.contains("ferry_autoscaler_wake_seconds_count 1"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            r#"ferry_autoscaler_ready_workers{{endpoint="ml/demo",endpoint_id="{id}"}} 1"#,
            id = endpoint.endpoint_id()
        )),
        "{text}"
    );
    // A sync endpoint has no queue to tell of.
    assert!(!text.contains("ferry_queue_backlog_tasks{"), "{text}");

    // The requests are gone: back to zero.
    let running = evaluate(&ctx, &metrics, &endpoint, tracked, Load::default());
    serve_scale(&mut server, 0).await;
    let note = "2 → 0 workers: Idle (0 queued, 0 in flight)";
    serve_event(&mut server, "ScaledToZero", note).await;
    serve_scale_status(&mut server, &endpoint, "Idle", true).await;
    server.idle_after(running).await.expect("evaluated");
    let text = exposition(&registry);
    assert!(
        text.contains("ferry_autoscaler_wake_seconds_count 1"),
        "{text}"
    );
}

#[tokio::test]
async fn the_loop_scales_a_sync_endpoint_when_a_gateway_reports_requests() {
    let (nats, queue) = start_nats().await;
    let (ctx, mut server) = super::context(&nats.connection);
    let (registry, metrics) = metrics();
    let mut endpoint = scaled(EndpointType::Sync, 0, 4, 2);
    endpoint.status = Some(idle_status());
    let (store, mut writer) = reflector::store::<DeserializeGuard<ModelEndpoint>>();
    writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(
        endpoint.clone()
    ))));
    let stop = CancellationToken::new();
    let running = tokio::spawn(scaler::run(
        ctx.clone(),
        store,
        Duration::from_secs(60),
        metrics,
        stop.clone(),
    ));

    // The first round finds it idle and says so; it subscribed to reports before. Whatever
    // else a round sent before the report's changes would fail the next expectation.
    serve_scale(&mut server, 0).await;
    serve_scale_status(&mut server, &endpoint, "Idle", false).await;

    queue
        .gateway()
        .publish_load(&LoadReport {
            endpoint: endpoint.endpoint_id(),
            source: "gateway-1".into(),
            in_flight: 3,
        })
        .await
        .expect("published");
    serve_scale(&mut server, 2).await;
    let note = "0 → 2 workers: Load (0 queued, 3 in flight)";
    serve_event(&mut server, "ScaledUp", note).await;
    serve_scale_status(&mut server, &endpoint, "Load", true).await;

    // The workers are ready: a later round sees them (the gauge says so) and, the count
    // holding, sends nothing — a request would hold the loop until answered.
    let ready = ModelEndpointStatus {
        desired_replicas: Some(2),
        ready_replicas: Some(2),
        ..Default::default()
    };
    endpoint.status = Some(ready);
    writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(
        endpoint.clone()
    ))));
    let ready_gauge = format!(
        r#"ferry_autoscaler_ready_workers{{endpoint="ml/demo",endpoint_id="{id}"}} 2"#,
        id = endpoint.endpoint_id()
    );
    exposition_until(&registry, |text| text.contains(&ready_gauge)).await;

    // The endpoint is deleted: its series go with it at the next round.
    writer.apply_watcher_event(&watcher::Event::Delete(DeserializeGuard(Ok(endpoint))));
    exposition_until(&registry, |text| !text.contains(r#"endpoint="ml/demo""#)).await;
    stop.cancel();
    server
        .idle_after(running)
        .await
        .expect("the loop stops without a panic");
}
