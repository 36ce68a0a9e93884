//! The operator dashboard at `GET /`: one page, its script and its stylesheet, compiled into the
//! binary so that the daemon needs no files beside it and the page no build step.
//!
//! The page itself is public: it holds no data. Everything it shows comes from the admin API,
//! which it calls with the token the operator types in, so the token check stays in one place.

use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::error::ErrorBody;
use super::{ApiError, AppState};

const INDEX: &str = include_str!("dashboard/index.html");

/// The assets under `/assets/`: name, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_str!("dashboard/dashboard.css"),
    ),
];

/// Nothing but the daemon's own files, no inline code, no framing: an injected string can
/// neither run nor load anything, and the admin token cannot leave for another origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{name}", get(asset))
}

#[utoipa::path(
    get,
    path = "/",
    tag = "dashboard",
    operation_id = "dashboard",
    summary = "The operator dashboard: one page that calls the admin API with the token typed into it",
    responses((status = 200, description = "The page; public, it holds no data.", body = String,
        content_type = "text/html; charset=utf-8")),
)]
pub(super) async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

#[utoipa::path(
    get,
    path = "/assets/{name}",
    tag = "dashboard",
    operation_id = "dashboard_asset",
    summary = "The dashboard's script and stylesheet",
    params(("name" = String, Path, description = "`dashboard.js` or `dashboard.css`.")),
    responses(
        (status = 200, description = "The file.", content(
            (String = "text/javascript; charset=utf-8"),
            (String = "text/css; charset=utf-8"),
        )),
        (status = 404, description = "`not_found`: no such asset.", body = ErrorBody),
    ),
)]
pub(super) async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(asset, _, _)| *asset == name) {
        Some((_, content_type, body)) => page(content_type, body),
        None => {
            ApiError::not_found("not_found", format!("no asset named `{name}`")).into_response()
        }
    }
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    // `no-cache` rather than a long max-age: the files change with the binary and carry no
    // version in their names, so a browser must ask again after an upgrade.
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        // Older browsers know only this header for what `frame-ancestors` says.
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    let mut response = body.into_response();
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}
