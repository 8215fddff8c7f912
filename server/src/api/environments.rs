//! `/execution-environments`: list, get, put (create or update), delete.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use trident_backends::Executor;
use trident_core::{EnvironmentId, EnvironmentSpec, Input, PutError, PutOutcome, Reply};

use super::{ApiError, AppState, ErrorCode, Query, decode};
use crate::driver::PutFailure;

/// Poseidon's environment JSON: the spec's fields, then `id`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct EnvironmentBody {
    #[serde(flatten)]
    spec: EnvironmentSpec,
    id: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListBody {
    /// Poseidon answers `null` when there are none.
    execution_environments: Option<Vec<EnvironmentBody>>,
}

fn parse_environment(text: &str) -> Result<EnvironmentId, ApiError> {
    // Poseidon's route only matches `[0-9]+`; anything else is an unknown path.
    text.parse().map_err(|_| ApiError::NotFoundEmpty)
}

/// `fetch` must be a boolean if present (Poseidon: 400 otherwise). Trident's manager is the
/// source of truth, so fetching changes nothing (Poseidon's fetch bug, §5.6, does not exist).
fn check_fetch(query: &Query) -> Result<(), ApiError> {
    match query.get("fetch").map(|value| value.as_str()) {
        None
        | Some(
            "" | "true" | "false" | "1" | "0" | "t" | "f" | "T" | "F" | "TRUE" | "FALSE" | "True"
            | "False",
        ) => Ok(()),
        Some(other) => Err(ApiError::BadRequest(format!(
            "invalid value {other:?} for fetch"
        ))),
    }
}

pub(super) async fn list<E: Executor>(
    State(state): State<Arc<AppState<E>>>,
    query: Query,
) -> Result<Json<ListBody>, ApiError> {
    check_fetch(&query)?;
    let environments = state
        .manager
        .query(|manager| {
            manager
                .environments()
                .map(|(id, spec)| EnvironmentBody {
                    spec: spec.clone(),
                    id: id.0,
                })
                .collect::<Vec<_>>()
        })
        .await?;
    Ok(Json(ListBody {
        execution_environments: (!environments.is_empty()).then_some(environments),
    }))
}

pub(super) async fn get<E: Executor>(
    State(state): State<Arc<AppState<E>>>,
    Path(environment): Path<String>,
    query: Query,
) -> Result<Json<EnvironmentBody>, ApiError> {
    let id = parse_environment(&environment)?;
    check_fetch(&query)?;
    let spec = state
        .manager
        .query(move |manager| manager.environment(id).cloned())
        .await?
        .ok_or(ApiError::NotFoundEmpty)?;
    Ok(Json(EnvironmentBody { spec, id: id.0 }))
}

/// 201 when created, 204 when replaced; waits until the backend registered it. Unlike
/// Poseidon, an update does not tear the pool down: an unchanged spec changes nothing, a new
/// pool size resizes, anything else rolls the pool while old runners keep serving.
pub(super) async fn put<E: Executor>(
    State(state): State<Arc<AppState<E>>>,
    Path(environment): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let id = parse_environment(&environment)?;
    let spec: EnvironmentSpec = decode(&body)?;
    let measured = state.monitor.influx_enabled().then(|| spec.clone());
    let outcome = state.manager.put_environment(id, spec).await;
    if let (Some(spec), Ok(outcome @ (PutOutcome::Created | PutOutcome::Updated))) =
        (measured, &outcome)
    {
        let environments = environment_count(&state).await;
        let created = matches!(outcome, PutOutcome::Created);
        state
            .monitor
            .environment_put(id, &spec, created, environments);
    }
    match outcome {
        Ok(PutOutcome::Created) => {
            tracing::info!(environment = %id, "environment created");
            Ok(StatusCode::CREATED)
        }
        Ok(PutOutcome::Updated | PutOutcome::Unchanged) => Ok(StatusCode::NO_CONTENT),
        Err(PutFailure::Refused(PutError::Invalid(error))) => {
            Err(ApiError::BadRequest(error.to_string()))
        }
        Err(PutFailure::Stopped) => Err(ApiError::ShuttingDown),
        Err(error) => Err(ApiError::Internal {
            code: ErrorCode::Unknown,
            message: error.to_string(),
        }),
    }
}

pub(super) async fn delete<E: Executor>(
    State(state): State<Arc<AppState<E>>>,
    Path(environment): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_environment(&environment)?;
    match state.manager.apply(Input::DeleteEnvironment { id }).await? {
        Reply::Delete(Ok(())) => {
            tracing::info!(environment = %id, "environment deleted");
            if state.monitor.influx_enabled() {
                let environments = environment_count(&state).await;
                state.monitor.environment_deleted(id, environments);
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Reply::Delete(Err(_)) => Err(ApiError::NotFoundEmpty),
        other => Err(super::runners::unexpected(other)),
    }
}

/// How many environments there are now, for Poseidon's `poseidon_environments` count.
async fn environment_count<E: Executor>(state: &AppState<E>) -> usize {
    state
        .manager
        .query(|manager| manager.environment_ids().count())
        .await
        .unwrap_or(0)
}
