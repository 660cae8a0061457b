//! What describes the service: its OpenAPI document and its metrics.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::app::{App, Inner};
use crate::error::ApiError;

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI 3 document")))]
pub(crate) async fn openapi() -> Response {
    let doc = super::DOC.get().map(String::as_str).unwrap_or("{}");
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
        .into_response()
}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(State(app): State<App>) -> Result<Response, ApiError> {
    if !app.metrics_on_api {
        return Err(super::no_route().await);
    }
    render_metrics(&app)
}

/// The metrics exposition (also served by `--metrics-listen`).
pub fn render_metrics(app: &Inner) -> Result<Response, ApiError> {
    let mut states = BTreeMap::new();
    for r in app.host.list()? {
        *states.entry(r.state).or_insert(0) += 1;
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(&states),
    )
        .into_response())
}
