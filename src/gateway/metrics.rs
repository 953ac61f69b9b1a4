//! The gateway's metrics: its HTTP requests by route template and status class, with their
//! latency, and the async tasks it accepts per endpoint (distinct tasks and idempotent repeats
//! apart, so each sums across replicas).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, histogram::Histogram};
use prometheus_client::registry::Registry;

use crate::crd::EndpointId;
use crate::metrics::EndpointLabel;

/// The route of a request no route matched: its raw path would be an unbounded label.
const UNMATCHED_ROUTE: &str = "unmatched";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    /// The route template, e.g. `/v1/async-tasks/{task_id}`.
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    #[prometheus(flatten)]
    route: RouteLabels,
    /// `2xx`, `4xx`, `5xx`, …
    status: &'static str,
}

pub struct GatewayMetrics {
    tasks_submitted: Family<EndpointLabel, Counter>,
    task_repeats: Family<EndpointLabel, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RouteLabels, Histogram>,
}

impl GatewayMetrics {
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = GatewayMetrics {
            tasks_submitted: Family::default(),
            task_repeats: Family::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    0.0005, 2.0, 16,
                ))
            }),
        };
        registry.register(
            "ferry_gateway_tasks_submitted",
            "Async tasks accepted, per endpoint (a repeated idempotent submission is not counted)",
            metrics.tasks_submitted.clone(),
        );
        registry.register(
            "ferry_gateway_task_repeats",
            "Async submissions answered with an earlier task of the same Idempotency-Key, per endpoint",
            metrics.task_repeats.clone(),
        );
        registry.register(
            "ferry_gateway_http_requests",
            "HTTP requests answered, by method, route template and status class",
            metrics.requests.clone(),
        );
        registry.register(
            "ferry_gateway_http_request_duration_seconds",
            "Time from receiving a request to its response's head, by method and route template",
            metrics.request_seconds.clone(),
        );
        Arc::new(metrics)
    }

    pub fn task_submitted(&self, endpoint: &EndpointId) {
        self.tasks_submitted
            .get_or_create(&EndpointLabel::of(endpoint))
            .inc();
    }

    pub fn task_repeated(&self, endpoint: &EndpointId) {
        self.task_repeats
            .get_or_create(&EndpointLabel::of(endpoint))
            .inc();
    }
}

/// Middleware counting and timing every request by the route that matched it.
pub async fn observe_request(
    State(metrics): State<Arc<GatewayMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
        .to_owned();
    let route = RouteLabels {
        method: method_label(request.method()),
        route,
    };
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .request_seconds
        .get_or_create(&route)
        .observe(started.elapsed().as_secs_f64());
    let status = status_class(response.status().as_u16());
    metrics
        .requests
        .get_or_create(&RequestLabels { route, status })
        .inc();
    response
}

/// The method as a bounded label: the standard ones by name, any other as `other`.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [(Method, &str); 7] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
    ];
    KNOWN
        .iter()
        .find(|(known, _)| known == method)
        .map_or("other", |(_, name)| *name)
}

fn status_class(code: u16) -> &'static str {
    match code / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_bounded() {
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(404), "4xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(method_label(&Method::POST), "POST");
        let custom = Method::from_bytes(b"PURGE").expect("method");
        assert_eq!(method_label(&custom), "other");
    }
}
