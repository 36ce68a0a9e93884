//! `GET /api/v1/openapi.json`: the HTTP surface as an OpenAPI 3.1 document, generated from the
//! handlers' annotations and the types they answer with, so it cannot drift from them unnoticed.
//!
//! Served without the admin token: it is documentation, and says nothing an operator's
//! configuration does not (the paths are the same for every deployment).

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::schema::Type;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, ObjectBuilder, Ref, RefOr, ResponseBuilder, SecurityRequirement,
};
use utoipa::{Modify, OpenApi};

use super::{admin, dashboard, health, status, webhooks};

/// Where the document is served.
pub const PATH: &str = "/api/v1/openapi.json";

/// The prefix of the routes behind `admin::require_token`.
const ADMIN_PREFIX: &str = "/api/v1/";

const DESCRIPTION: &str = "Tandem syncs Jira issues and Salesforce cases both ways. This is its \
HTTP surface: health and metrics, webhook intake, the admin API under `/api/v1` and the operator \
dashboard.\n\n\
The admin API needs `Authorization: Bearer <admin.token>`; with no `admin.token` configured it \
answers 503 `admin_disabled` rather than being open. This document itself is public.\n\n\
Every error is `{\"error\":{\"code\",\"message\"}}` (`ErrorBody`) with the status that fits. Any \
request may also be answered 408 `request_timeout` (past `server.request_timeout`), 413 \
`payload_too_large` (past `server.max_body_bytes`), 405 `method_not_allowed` or 404 `not_found`. \
Every response carries `x-request-id` (the caller's, if it sent one).";

#[derive(OpenApi)]
#[openapi(
    info(title = "Tandem", version = env!("CARGO_PKG_VERSION"), description = DESCRIPTION),
    paths(
        health::healthz,
        health::readyz,
        health::metrics,
        webhooks::receive,
        webhooks::receive_with_token,
        admin::list,
        admin::replay_matching,
        admin::show,
        admin::discard,
        admin::replay_one,
        status::connectors,
        status::flows,
        status::flow,
        status::runs,
        status::run,
        status::one_run,
        status::backfill,
        status::reconcile,
        status::last_reconcile,
        status::record,
        document,
        dashboard::index,
        dashboard::asset,
    ),
    modifiers(&AdminToken),
    tags(
        (name = "health", description = "Liveness, readiness and metrics: public."),
        (name = "webhooks", description = "Where the vendors' notifications come in; each connector \
            authenticates its own."),
        (name = "dead letters", description = "Changes that failed for good: list, inspect, replay, \
            discard. Admin token."),
        (name = "status", description = "Flows, connectors, runs and a record's history. Admin token."),
        (name = "dashboard", description = "The operator page: public, it holds no data."),
        (name = "meta", description = "This document: public."),
    ),
)]
pub struct ApiDoc;

/// Built once: the document only changes with the binary.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
});

#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    summary = "This document (OpenAPI 3.1); no token needed",
    responses((status = 200, description = "The document.", body = serde_json::Value)),
)]
pub async fn document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

/// What `admin::require_token` adds to every admin route, added to every admin operation here
/// in one place as the router does: the bearer scheme, 401 and 503 `admin_disabled`, and the
/// 500 any of them can answer when the journal fails.
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`admin.token` from the daemon's configuration."))
                    .build(),
            ),
        );
        let shared = [
            (
                "401",
                "Unauthorized",
                error_response(
                    "`unauthorized`: the token is missing, malformed or wrong (one answer for all \
                     three).",
                )
                .header(
                    "WWW-Authenticate",
                    HeaderBuilder::new()
                        .schema(ObjectBuilder::new().schema_type(Type::String))
                        .description(Some("`Bearer realm=\"tandem-admin\"`"))
                        .build(),
                )
                .build(),
            ),
            (
                "503",
                "AdminDisabled",
                error_response(
                    "`admin_disabled`: no `admin.token` is configured, so the admin API is off.",
                )
                .build(),
            ),
            (
                "500",
                "Internal",
                error_response("`internal`: the journal failed; the detail is in the server log.")
                    .build(),
            ),
        ];
        for (_, name, response) in &shared {
            components
                .responses
                .insert((*name).to_string(), RefOr::T(response.clone()));
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with(ADMIN_PREFIX) || path == PATH {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                operation.security = Some(vec![SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
                for (status, name, _) in &shared {
                    operation
                        .responses
                        .responses
                        .entry((*status).to_string())
                        .or_insert_with(|| RefOr::Ref(Ref::from_response_name(*name)));
                }
            }
        }
    }
}

fn error_response(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    )
}
