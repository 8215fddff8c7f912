//! Trident's routes for operators, beside Poseidon's API: readiness (`/api/v1/ready`),
//! Prometheus metrics (`/metrics`) and the OpenAPI document (`/api/v1/openapi.json`). All three
//! are open (no token), as `/health` is: they reveal no runner ids and no secrets.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use trident_backends::Executor;

use super::{ApiError, AppState};
use crate::monitoring::metrics::CONTENT_TYPE;

/// 204 once the first recovery has finished (the manager reconciled the backend's first
/// inventory, so it knows every runner a previous process left), 503 before. `/health` answers
/// from the start; a load balancer should send traffic only once this says ready.
pub(super) async fn ready<E: Executor>(State(state): State<Arc<AppState<E>>>) -> Response {
    if state.manager.recovered() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        ApiError::NotReady.into_response()
    }
}

/// Every Prometheus metric in OpenMetrics text. The pool gauges are read from the manager now.
pub(super) async fn metrics<E: Executor>(
    State(state): State<Arc<AppState<E>>>,
) -> Result<Response, ApiError> {
    let statistics = state
        .manager
        .query(|manager| manager.all_statistics())
        .await?;
    let metrics = state.monitor.metrics();
    metrics.pools(&statistics);
    if state.manager.recovered() {
        metrics.set_ready();
    }
    let mut response = metrics.encode().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}

/// The OpenAPI document of every route.
pub(super) async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(super::openapi::document())
}
