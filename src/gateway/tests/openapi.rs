//! The OpenAPI document and the router agree: every documented operation is served by a
//! handler, no other method is served on a documented path, and no route enters the router
//! without its documentation.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use super::{KEY_A, fixture, router};
use crate::admin::{self, Readiness};

/// Set on each answer to the route template that answered it; absent for the fallback.
const MATCHED: &str = "x-matched-route";

async fn mark_matched_route(request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(value) = matched.and_then(|m| HeaderValue::from_str(m.as_str()).ok()) {
        response.headers_mut().insert(MATCHED, value);
    }
    response
}

/// `/openapi.json` as the gateway serves it.
async fn document(app: &axum::Router) -> Value {
    let request = Request::get("/openapi.json").body(Body::empty());
    let answer = app.clone().oneshot(request.expect("request")).await;
    let answer = answer.expect("answers");
    assert_eq!(
        answer.status(),
        StatusCode::OK,
        "/openapi.json needs no key"
    );
    let bytes = answer.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&bytes).expect("JSON")
}

#[tokio::test]
async fn every_documented_operation_is_served_and_no_other_method() {
    let fixture = fixture(true).await;
    // The app as `gateway::serve` builds it: the API and the probes.
    let registry = Arc::new(prometheus_client::registry::Registry::default());
    let app = router(fixture.state.clone(), 1024 * 1024)
        .merge(admin::router(registry, Readiness::default()))
        .layer(middleware::from_fn(mark_matched_route));
    let document = document(&app).await;
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().expect("paths");
    assert!(paths.len() >= 25, "{} paths", paths.len());
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];
    for (path, item) in paths {
        let uri = fill_parameters(path);
        for method in &methods {
            let documented = item.get(method.as_str().to_lowercase()).is_some();
            let request = Request::builder()
                .method(method)
                .uri(&uri)
                .header(header::AUTHORIZATION, format!("Bearer {KEY_A}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .expect("request");
            let answer = app.clone().oneshot(request).await.expect("answers");
            let status = answer.status();
            if documented {
                let matched = answer.headers().get(MATCHED).map(|v| v.to_str().unwrap());
                assert_eq!(matched, Some(path.as_str()), "{method} {uri}: {status}");
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {uri} is served but not documented"
                );
            }
        }
    }
}

/// `path` with each `{parameter}` replaced by a value.
fn fill_parameters(path: &str) -> String {
    path.split('/')
        .map(|part| if part.starts_with('{') { "probe" } else { part })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn operations_that_refuse_without_a_key_require_it_and_errors_are_details() {
    let fixture = fixture(true).await;
    let document = document(&router(fixture.state.clone(), 1024)).await;
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["api_key"]["scheme"], "basic");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    let error = "#/components/schemas/ErrorBody";
    let mut public = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("item") {
            let responses = operation["responses"].as_object().expect("responses");
            let refusable = responses.contains_key("401");
            assert_eq!(
                operation.get("security").is_some(),
                refusable,
                "{method} {path}"
            );
            if !refusable {
                public.push(format!("{method} {path}"));
            }
            for (status, response) in responses {
                let error_status = status.starts_with('4') || status.starts_with('5');
                if path.starts_with("/v") && error_status {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(schema, error, "{method} {path} {status}");
                }
            }
        }
    }
    // Public documentation, the console's files and the probes need no key; nothing else.
    let expected_public = [
        "get /console",
        "get /console/",
        "get /console/{file}",
        "get /healthcheck",
        "get /healthz",
        "get /metrics",
        "get /openapi.json",
        "get /readyz",
        "post /v1/model-bundles",
    ];
    public.sort();
    assert_eq!(public, expected_public);
}

/// The files whose code builds the gateway's router (tests excluded).
fn router_sources() -> Vec<(String, String)> {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let mut files = vec![format!("{src}/gateway.rs"), format!("{src}/admin.rs")];
    let modules = std::fs::read_dir(format!("{src}/gateway")).expect("src/gateway");
    for entry in modules {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|ext| ext == "rs") && !path.ends_with("tests.rs") {
            files.push(path.display().to_string());
        }
    }
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).expect("source");
            let code = text
                .split("#[cfg(test)]\nmod tests {")
                .next()
                .unwrap_or_default();
            (file, code.to_owned())
        })
        .collect()
}

#[test]
fn no_route_is_registered_without_its_documentation() {
    // `OpenApiRouter::routes(routes!(handler))` registers a handler at the path and method of
    // its `#[utoipa::path]` and documents it in one step; these would add a route unseen.
    let undocumented = [
        ".route(",
        ".route_service(",
        ".nest(",
        ".nest_service(",
        ".fallback_service(",
        "routing::get",
        "routing::post",
    ];
    let sources = router_sources();
    assert!(sources.len() > 10, "found {} files", sources.len());
    for (file, code) in sources {
        for pattern in undocumented {
            assert!(
                !code.contains(pattern),
                "{file} registers a route with {pattern}"
            );
        }
    }
}
