//! `/metrics` of a running `ferry dev` after a task went through it (gateway, forwarder,
//! dispatcher, autoscaler in one process): the format follows the scraper's `Accept`, the
//! classic one passes `promtool check metrics`, every promised family is there with bounded
//! labels, and the chart's alerts and dashboard read only series it exports.

use std::time::Duration;

use crate::support::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// What Prometheus sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_dev_serves_both_formats_and_promtool_accepts_the_classic_one() {
    let receiver = Receiver::start().await;
    let manifests = Manifests::with_example_bundle();
    let endpoint = endpoint_yaml("scraped", "test-bundle", &receiver.url("/cb"), "");
    manifests.add("endpoint.yaml", &endpoint);
    let dev = Dev::start(manifests.path(), None).await;
    let id = dev.ready_endpoint("scraped").await;
    // Submitted twice under one Idempotency-Key: one task, counted once, and one repeat.
    let submit = || async {
        let answer = dev
            .http
            .post(format!(
                "{}/v1/async-tasks?model_endpoint_id={id}",
                dev.base
            ))
            .basic_auth(API_KEY, Some(""))
            .header("Idempotency-Key", "scraped-1")
            .json(&json!({"args": {"x": 2, "y": "hello"}}))
            .send()
            .await
            .expect("submits");
        assert_eq!(answer.status().as_u16(), 200);
        let answer: serde_json::Value = answer.json().await.expect("json");
        answer["task_id"].as_str().expect("task id").to_owned()
    };
    let task = submit().await;
    assert_eq!(submit().await, task, "the repeat names the first task");
    dev.finished_task(&task, WAIT).await;
    receiver.wait_for(1, WAIT).await;

    // The dispatcher counts the attempt once the receiver has answered.
    let delivered =
        format!(r#"ferry_dispatcher_attempts_total{{endpoint_id="{id}",outcome="delivered"}} 1"#);
    let (content_type, classic) = eventually("the delivery counted", WAIT, || async {
        let (content_type, text) = dev.metrics_as("text/plain;version=0.0.4").await;
        text.lines()
            .any(|line| line == delivered)
            .then_some((content_type, text))
    })
    .await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    promtool_check(&classic);

    let named = format!(r#"endpoint="default/scraped",endpoint_id="{id}""#);
    let expected = [
        format!(r#"ferry_gateway_tasks_submitted_total{{endpoint_id="{id}"}} 1"#),
        format!(r#"ferry_gateway_task_repeats_total{{endpoint_id="{id}"}} 1"#),
        format!(r#"ferry_forwarder_tasks_total{{endpoint_id="{id}",outcome="success"}} 1"#),
        format!(r#"ferry_forwarder_predict_duration_seconds_count{{endpoint_id="{id}"}} 1"#),
        format!(r#"ferry_dispatcher_attempt_duration_seconds_count{{endpoint_id="{id}"}} 1"#),
        r#"ferry_gateway_http_requests_total{method="POST",route="/v1/async-tasks",status="2xx"} 2"#
            .to_owned(),
        format!("ferry_queue_backlog_tasks{{{named}}} 0"),
        format!("ferry_queue_oldest_task_age_seconds{{{named}}} "),
        format!("ferry_autoscaler_ready_workers{{{named}}} 1"),
        r#"ferry_build_info{version=""#.to_owned(),
        "process_cpu_seconds_total ".to_owned(),
        "process_resident_memory_bytes ".to_owned(),
        "process_open_fds ".to_owned(),
        "process_start_time_seconds ".to_owned(),
    ];
    for series in &expected {
        assert!(
            classic
                .lines()
                .any(|line| line.starts_with(series.as_str())),
            "{series} missing from\n{classic}"
        );
    }
    // The chart's alerts and dashboard read only series ferry exports; the controller's are the
    // operator's, checked against its scrape in operator.rs.
    let scraped = monitoring::assert_monitoring_reads_exported(&classic, |name| {
        !monitoring::is_controller_series(name)
    });
    assert!(scraped.len() > 10, "{scraped:?}");
    // Task ids and callback URLs never become labels; requests are known by route template.
    assert!(!classic.contains(&task), "{classic}");
    assert!(!classic.contains("/cb"), "{classic}");
    assert!(
        classic.contains(r#"route="/v1/async-tasks/{task_id}""#),
        "{classic}"
    );

    let (content_type, openmetrics) = dev.metrics_as(PROMETHEUS_ACCEPT).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    for family in [
        "# TYPE ferry_gateway_tasks_submitted counter",
        "# TYPE ferry_build info",
        "# TYPE process_cpu_seconds counter",
        "# UNIT process_cpu_seconds seconds",
    ] {
        assert!(
            openmetrics.contains(family),
            "{family} missing from\n{openmetrics}"
        );
    }
    assert!(
        openmetrics.contains(&delivered),
        "{delivered} missing from\n{openmetrics}"
    );
}
