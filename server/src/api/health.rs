//! `/health`, `/version` and the statistics route.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use trident_backends::Executor;

use super::{ApiError, AppState, ErrorCode};

/// 204, or 503 `PREWARMING_POOL_DEPLETING` naming the environments whose idle ratio is under
/// the threshold (a threshold of 0, or a pool of size 0, never depletes).
pub(super) async fn health<E: Executor>(
    State(state): State<Arc<AppState<E>>>,
) -> Result<Response, ApiError> {
    let threshold = state.depleting_threshold;
    let statistics = state
        .manager
        .query(|manager| manager.all_statistics())
        .await?;
    let depleting: Vec<String> = statistics
        .iter()
        .filter(|stats| {
            stats.target > 0 && f64::from(stats.idle) / f64::from(stats.target) < threshold
        })
        .map(|stats| stats.id.to_string())
        .collect();
    if depleting.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let body = serde_json::json!({
        "message": format!("the prewarming pool is depleting: environments {}", depleting.join(", ")),
        "errorCode": ErrorCode::PrewarmingPoolDepleting,
    });
    Ok((StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response())
}

/// The release as a JSON string.
pub(super) async fn version<E: Executor>(State(state): State<Arc<AppState<E>>>) -> Json<String> {
    Json(state.version.clone())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Statistics {
    id: u64,
    prewarming_pool_size: u32,
    idle_runners: u32,
    used_runners: u32,
}

/// `{"<envId>": {id, prewarmingPoolSize, idleRunners, usedRunners}}`.
pub(super) async fn statistics<E: Executor>(
    State(state): State<Arc<AppState<E>>>,
) -> Result<Json<BTreeMap<String, Statistics>>, ApiError> {
    let statistics = state
        .manager
        .query(|manager| manager.all_statistics())
        .await?;
    Ok(Json(
        statistics
            .into_iter()
            .map(|stats| {
                (
                    stats.id.to_string(),
                    Statistics {
                        id: stats.id.0,
                        prewarming_pool_size: stats.target,
                        idle_runners: stats.idle,
                        used_runners: stats.used,
                    },
                )
            })
            .collect(),
    ))
}
