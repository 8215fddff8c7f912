//! `POST /runners` (claim) and `DELETE /runners/{id}` (release).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Serialize;
use trident_backends::Executor;
use trident_core::{ClaimError, Input, MappedPort, Reply, RunnerError};

use super::bodies::ClaimBody;
use super::{ApiError, AppState, ErrorCode, decode, parse_runner};
use crate::driver::ClaimFailure;
use crate::monitoring::RequestIds;
use crate::monitoring::requests::LearntIds;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ClaimAnswer {
    runner_id: String,
    mapped_ports: Vec<MappedPort>,
}

/// Claims an idle runner. Never waits for one: an empty pool is `500 NOMAD_OVERLOAD` at once.
pub(super) async fn claim<E: Executor>(
    State(state): State<Arc<AppState<E>>>,
    body: Bytes,
) -> Result<(Extension<LearntIds>, Json<ClaimAnswer>), ApiError> {
    let body: ClaimBody = decode(&body)?;
    // Answered once the claim is persisted: a restarted server recovers every claim it answered.
    let reply = state
        .manager
        .claim(body.input())
        .await
        .map_err(|failure| match failure {
            ClaimFailure::Stopped => ApiError::ShuttingDown,
            ClaimFailure::NotDurable(_) | ClaimFailure::Withdrawn => ApiError::Internal {
                code: ErrorCode::NomadInternalServerError,
                message: failure.to_string(),
            },
        })?;
    match reply {
        Reply::Claim(Ok(claimed)) => {
            tracing::info!(runner = %claimed.runner, lease = %claimed.lease, "runner claimed");
            // The request's span and measurement learn the runner only now.
            let ids = LearntIds(RequestIds {
                runner: Some(claimed.runner),
                environment: Some(claimed.runner.environment()),
            });
            Ok((
                Extension(ids),
                Json(ClaimAnswer {
                    runner_id: claimed.runner.to_string(),
                    mapped_ports: claimed.ports,
                }),
            ))
        }
        Reply::Claim(Err(error @ ClaimError::UnknownEnvironment)) => {
            Err(ApiError::NotFound(error.to_string()))
        }
        Reply::Claim(Err(error @ ClaimError::NoIdleRunner)) => Err(ApiError::Internal {
            code: ErrorCode::NomadOverload,
            message: error.to_string(),
        }),
        other => Err(unexpected(other)),
    }
}

/// Releases (destroys) a claimed runner. Answers at once: the stop runs in the background, with
/// bounded retries, instead of blocking the request as Poseidon's does.
pub(super) async fn release<E: Executor>(
    State(state): State<Arc<AppState<E>>>,
    Path(runner): Path<String>,
) -> Result<StatusCode, ApiError> {
    let runner = parse_runner(&runner)?;
    match state.manager.apply(Input::Release { runner }).await? {
        Reply::Runner(Ok(())) => {
            forget_pending(&state, runner);
            Ok(StatusCode::NO_CONTENT)
        }
        Reply::Runner(Err(RunnerError::NotClaimed)) => Err(ApiError::RunnerGone),
        other => Err(unexpected(other)),
    }
}

fn forget_pending<E>(state: &AppState<E>, runner: trident_core::RunnerId) {
    if let Ok(mut pending) = state.pending_executions.lock() {
        pending.forget_runner(runner);
    }
}

pub(super) fn unexpected(reply: Reply) -> ApiError {
    ApiError::Internal {
        code: ErrorCode::Unknown,
        message: format!("unexpected reply from the manager: {reply:?}"),
    }
}
