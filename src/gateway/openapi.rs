//! The OpenAPI 3.1 document served at `/openapi.json`. Each operation comes from its handler's
//! `#[utoipa::path]`, taken as the router registers the handler (`utoipa_axum::routes!`), so a
//! route and its documentation are written in one place. This module adds what the operations
//! share: the title, the API key's security schemes, the tags, and the error answers.

use axum::{
    Extension,
    body::Bytes,
    http::header,
    response::{IntoResponse, Response},
};
use utoipa::OpenApi;
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};

use super::error::ErrorBody;

/// The security scheme of the API key as HTTP Basic's user name, and as a Bearer token.
const BASIC: &str = "api_key";
const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ferry",
        description = "Serve machine-learning models as endpoints and deliver their results to \
                       callback URLs. The `/v1` and `/v2` routes speak Launch's API; ferry adds \
                       task listing and cancel, endpoint stats, dead letters and redelivery."
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "bundles", description = "What an endpoint runs (Launch's model bundles)"),
        (name = "endpoints", description = "Model endpoints (Launch's)"),
        (name = "tasks", description = "Async, sync and streaming tasks"),
        (name = "callbacks", description = "Dead-lettered callbacks and their redelivery"),
        (name = "console", description = "The web console's files"),
        (name = "probes", description = "Health, readiness and metrics"),
        (name = "documentation", description = "This document"),
    )
)]
struct ApiDoc;

/// The whole document: the shared parts, the `operations` the router registered and the probes
/// of [`crate::admin`]; every operation that can answer 401 requires the API key.
pub fn complete(operations: Document) -> Document {
    let mut document = ApiDoc::openapi();
    document.merge(operations);
    document.merge(crate::admin::openapi());
    let components = document.components.get_or_insert_with(Default::default);
    let scheme = |scheme, description: &str| {
        let http = HttpBuilder::new()
            .scheme(scheme)
            .description(Some(description));
        SecurityScheme::Http(http.build())
    };
    components.add_security_scheme(
        BASIC,
        scheme(
            HttpAuthScheme::Basic,
            "HTTP Basic with the API key as the user name and an empty password, as Launch's \
             client sends it",
        ),
    );
    components.add_security_scheme(
        BEARER,
        scheme(HttpAuthScheme::Bearer, "The API key as a Bearer token"),
    );
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ];
        for operation in operations.into_iter().flatten() {
            require_key_if_refusable(operation);
        }
    }
    document
}

fn require_key_if_refusable(operation: &mut Operation) {
    if operation.responses.responses.contains_key("401") {
        let either = [BASIC, BEARER].map(|name| SecurityRequirement::new(name, [""; 0]));
        operation.security = Some(either.into());
    }
}

/// The document as `/openapi.json` serves it, serialized once.
#[derive(Clone)]
pub struct DocumentJson(Bytes);

impl DocumentJson {
    pub fn new(document: &Document) -> Self {
        // A tree of plain strings, maps and numbers: serializing it cannot fail.
        let json = serde_json::to_vec(document).unwrap_or_default();
        DocumentJson(Bytes::from(json))
    }
}

/// This document. Public: it holds no secret and no team's data, so it needs no API key.
#[utoipa::path(
    get, path = "/openapi.json", tag = "documentation",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API",
        body = Object, content_type = "application/json")),
)]
pub async fn openapi_json(Extension(document): Extension<DocumentJson>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document.0).into_response()
}

/// The error answers, each `{"detail": ...}` under its status code (see
/// [`super::error::AppError`], which builds them).
#[allow(
    dead_code,
    reason = "described for the document only; AppError builds the answers"
)]
pub mod answers {
    use utoipa::IntoResponses;

    use super::ErrorBody;

    /// The request is not one ferry can serve (a missing parameter, an invalid value).
    #[derive(IntoResponses)]
    #[response(status = 400)]
    pub struct BadRequest(ErrorBody);

    /// No API key, or one ferry does not know.
    #[derive(IntoResponses)]
    #[response(status = 401)]
    pub struct Unauthorized(ErrorBody);

    /// Not found, or not the caller's team's.
    #[derive(IntoResponses)]
    #[response(status = 404)]
    pub struct NotFound(ErrorBody);

    /// This gateway serves the fixed endpoints of its manifests and takes no changes.
    #[derive(IntoResponses)]
    #[response(status = 405)]
    pub struct ReadOnly(ErrorBody);

    /// The task is past PENDING: a worker started it, or it has its final status.
    #[derive(IntoResponses)]
    #[response(status = 409)]
    pub struct Conflict(ErrorBody);

    /// The request body is larger than the gateway takes.
    #[derive(IntoResponses)]
    #[response(status = 413)]
    pub struct TooLarge(ErrorBody);

    /// The body does not fit the schema: `detail` lists the problems.
    #[derive(IntoResponses)]
    #[response(status = 422)]
    pub struct Invalid(ErrorBody);

    /// The team's rate or task quota, or the endpoint's queue, is exhausted; or every worker is
    /// busy. `Retry-After` says when to try again.
    #[derive(IntoResponses)]
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    pub struct TooMany(ErrorBody);

    /// A worker answered something the gateway does not pass on (such as an answer too large).
    #[derive(IntoResponses)]
    #[response(status = 502)]
    pub struct BadGateway(ErrorBody);

    /// The task queue or the store is unavailable, or no worker became ready: retry. A
    /// submission answered so was not queued, unless the body has its `task_id`.
    #[derive(IntoResponses)]
    #[response(status = 503)]
    pub struct Unavailable(ErrorBody);

    /// The model did not answer within the task's `timeout_seconds`.
    #[derive(IntoResponses)]
    #[response(status = 504)]
    pub struct Timeout(ErrorBody);
}
