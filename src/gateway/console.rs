//! The console at `/console/`: a few static files (`console/` in the repository) built into the
//! binary, so the gateway serves it with nothing fetched at run time. The pages call the API
//! with the API key the user signs in with, so they see exactly what the key's team sees; the
//! files themselves hold nothing secret and need no key.

use axum::{
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use utoipa_axum::{router::OpenApiRouter, routes};

/// The console's routes: `/console` leads to `/console/`, which serves the page and its files.
pub fn routes<S: Clone + Send + Sync + 'static>() -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(redirect_to_index))
        .routes(routes!(index))
        .routes(routes!(asset))
}

/// Every file of the console: its name under `/console/` and its content type.
const ASSETS: [(&str, &str, &str); 6] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../console/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../console/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/api.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/dom.js"),
    ),
    (
        "pages.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/pages.js"),
    ),
];

/// Scripts and styles from the console's own files only, calls to this gateway only, and no
/// framing: an injected string can neither run nor send anything anywhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; \
     base-uri 'none'";

/// `/console` → `/console/`, so the pages' relative links resolve below it.
#[utoipa::path(get, path = "/console", tag = "console",
    responses((status = 308, description = "To `/console/`")))]
async fn redirect_to_index() -> Redirect {
    Redirect::permanent("console/")
}

/// The console's page. It asks for an API key and calls the API with it.
#[utoipa::path(get, path = "/console/", tag = "console",
    responses((status = 200, content_type = "text/html", body = String)))]
async fn index() -> Response {
    asset_response("index.html")
}

/// A file of the console: a script or a style sheet.
#[utoipa::path(get, path = "/console/{file}", tag = "console", params(("file" = String, Path)),
    responses((status = 200, description = "The file", body = String),
        (status = 404, description = "No such file", body = String)))]
async fn asset(Path(name): Path<String>) -> Response {
    asset_response(&name)
}

fn asset_response(name: &str) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(file, ..)| *file == name) else {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    };
    let mut response = (*body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // A new binary may serve new files under the same names: always revalidate.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_each_file_with_its_type_and_nothing_else() {
        let page = asset_response("index.html");
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(
            page.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        assert_eq!(
            asset_response("app.js").headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        for missing in ["../Cargo.toml", "", "secrets.js"] {
            assert_eq!(asset_response(missing).status(), StatusCode::NOT_FOUND);
        }
    }

    #[test]
    fn every_script_the_pages_import_is_served() {
        for (_, _, body) in ASSETS {
            for line in body.lines() {
                let Some(rest) = line.split(" from \"./").nth(1) else {
                    continue;
                };
                let file = rest.split('"').next().unwrap_or_default();
                assert!(
                    ASSETS.iter().any(|(name, ..)| *name == file),
                    "{file} is imported but not served"
                );
            }
        }
    }
}
