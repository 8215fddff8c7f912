//! Poseidon's HTTP and WebSocket API (`reference/poseidon.md` §1–2), one module per resource.
//!
//! Every error leaves through [`ApiError`], the one place that maps failures to status codes and
//! Poseidon's bodies: `{"message"}` for client errors, `{"message","errorCode"}` for server
//! errors.

pub mod bodies;
mod environments;
mod executions;
mod files;
mod health;
mod runners;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use subtle::ConstantTimeEq;
use trident_backends::Executor;
use trident_core::{ExecutionId, IdSource, RunnerId};

use crate::driver::{ManagerHandle, Stopped};
use bodies::decode;

/// What every handler shares.
pub struct AppState<E> {
    /// The way to the manager.
    pub manager: ManagerHandle,
    /// The backend, for the data plane (executions and files).
    pub executor: Arc<E>,
    /// `Poseidon-Token` that requests must carry; `None` for no authentication.
    pub token: Option<String>,
    /// The idle ratio under which `/health` reports a depleting pool; 0 never.
    pub depleting_threshold: f64,
    /// What `/version` answers.
    pub version: String,
    /// Executions requested with `POST /execute` and not yet connected.
    pub pending_executions: Mutex<PendingExecutions>,
    /// Fresh execution ids.
    pub ids: Mutex<Box<dyn IdSource>>,
    /// Files per update, output per execution, WebSocket message size.
    pub limits: crate::limits::ApiLimits,
}

impl<E> std::fmt::Debug for AppState<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// Executions waiting for their WebSocket, bounded per runner. Poseidon keeps them without a
/// time limit until used or until the runner goes; so does Trident, but with a bound.
#[derive(Debug, Default)]
pub struct PendingExecutions {
    by_id: BTreeMap<ExecutionId, (RunnerId, bodies::ExecuteBody)>,
}

/// Pending executions one runner may have.
pub const PENDING_EXECUTIONS_PER_RUNNER_MAX: usize = 64;

impl PendingExecutions {
    fn count_for(&self, runner: RunnerId) -> usize {
        self.by_id.values().filter(|(r, _)| *r == runner).count()
    }

    fn forget_runner(&mut self, runner: RunnerId) {
        self.by_id.retain(|_, (r, _)| *r != runner);
    }
}

/// Builds the router with every route of Poseidon's API under `/api/v1`.
pub fn router<E: Executor>(state: Arc<AppState<E>>) -> Router {
    let authenticated = Router::new()
        .route(
            "/statistics/execution-environments",
            get(health::statistics::<E>),
        )
        .route("/runners", post(runners::claim::<E>))
        .route(
            "/runners/{runner}",
            axum::routing::delete(runners::release::<E>),
        )
        .route(
            "/runners/{runner}/files",
            get(files::list::<E>).patch(files::update::<E>),
        )
        .route("/runners/{runner}/files/raw", get(files::download::<E>))
        .route("/runners/{runner}/execute", post(executions::execute::<E>))
        .route(
            "/runners/{runner}/websocket",
            get(executions::websocket::<E>),
        )
        .route("/execution-environments", get(environments::list::<E>))
        .route(
            "/execution-environments/{environment}",
            get(environments::get::<E>)
                .put(environments::put::<E>)
                .delete(environments::delete::<E>),
        )
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            authenticate::<E>,
        ));
    let open = Router::new()
        .route("/health", get(health::health::<E>))
        .route("/version", get(health::version::<E>));
    Router::new()
        .nest("/api/v1", authenticated.merge(open))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(state)
}

/// Checks `Poseidon-Token` in constant time; `/health` and `/version` are not behind it.
async fn authenticate<E: Executor>(
    State(state): State<Arc<AppState<E>>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &state.token {
        let given = headers
            .get("Poseidon-Token")
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        if !bool::from(given.ct_eq(expected.as_bytes())) {
            tracing::warn!(path = %request.uri().path(), "request with a missing or wrong token");
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    next.run(request).await
}

/// Poseidon's `errorCode`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// No idle runner (Poseidon's name for it, kept for CodeOcean).
    NomadOverload,
    /// The backend failed.
    NomadInternalServerError,
    /// `/health`: a pool is depleting.
    PrewarmingPoolDepleting,
    /// Anything else.
    Unknown,
}

/// Every way a request can fail, and how each looks on the wire.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `{"message"}`.
    #[error("{0}")]
    BadRequest(String),
    /// 404 `{"message"}`.
    #[error("{0}")]
    NotFound(String),
    /// 404 with an empty body (environments, as in Poseidon).
    #[error("not found")]
    NotFoundEmpty,
    /// 410: the runner is not (or no longer) claimed.
    #[error("no runner found with this id")]
    RunnerGone,
    /// 424 `{"message"}`.
    #[error("{0}")]
    FailedDependency(String),
    /// 500 `{"message","errorCode"}`.
    #[error("{message}")]
    Internal {
        /// Poseidon's code.
        code: ErrorCode,
        /// What went wrong.
        message: String,
    },
    /// 503: the server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl ApiError {
    fn internal(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError::Internal {
            code,
            message: message.into(),
        }
    }
}

impl From<Stopped> for ApiError {
    fn from(_: Stopped) -> Self {
        ApiError::ShuttingDown
    }
}

impl From<trident_backends::BackendError> for ApiError {
    fn from(error: trident_backends::BackendError) -> Self {
        use trident_backends::BackendError as B;
        match error {
            B::RunnerNotFound(_) => ApiError::RunnerGone,
            B::EnvironmentNotFound(_) => ApiError::NotFound(error.to_string()),
            B::BadRequest(message) => ApiError::BadRequest(message),
            B::FileNotFound => ApiError::FailedDependency(error.to_string()),
            B::Unavailable(_) => {
                ApiError::internal(ErrorCode::NomadInternalServerError, error.to_string())
            }
            B::Failed(message) => ApiError::internal(ErrorCode::Unknown, message),
        }
    }
}

#[derive(Serialize)]
struct ClientErrorBody<'a> {
    message: &'a str,
}

#[derive(Serialize)]
struct ServerErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "errorCode")]
    error_code: ErrorCode,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let client = |status: StatusCode| {
            (status, axum::Json(ClientErrorBody { message: &message })).into_response()
        };
        match &self {
            ApiError::BadRequest(_) => client(StatusCode::BAD_REQUEST),
            ApiError::NotFound(_) => client(StatusCode::NOT_FOUND),
            ApiError::NotFoundEmpty => StatusCode::NOT_FOUND.into_response(),
            ApiError::RunnerGone => client(StatusCode::GONE),
            ApiError::FailedDependency(_) => client(StatusCode::FAILED_DEPENDENCY),
            ApiError::Internal { code, .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(ServerErrorBody {
                    message: &message,
                    error_code: *code,
                }),
            )
                .into_response(),
            ApiError::ShuttingDown => client(StatusCode::SERVICE_UNAVAILABLE),
        }
    }
}

/// Parses a runner id from the path; a malformed one is as unknown as a missing one (410).
fn parse_runner(text: &str) -> Result<RunnerId, ApiError> {
    text.parse().map_err(|_| ApiError::RunnerGone)
}

/// The runner, if it is claimed; 410 otherwise.
async fn claimed_runner<E: Executor>(
    state: &AppState<E>,
    text: &str,
) -> Result<RunnerId, ApiError> {
    let runner = parse_runner(text)?;
    let claimed = state
        .manager
        .query(move |manager| manager.claimed_runner(runner).is_some())
        .await?;
    if claimed {
        Ok(runner)
    } else {
        Err(ApiError::RunnerGone)
    }
}

/// A sign of life on a runner, for its inactivity timer. A runner released meanwhile is no
/// error here: the operation that called this already succeeded.
async fn touch<E: Executor>(state: &AppState<E>, runner: RunnerId) -> Result<(), ApiError> {
    state
        .manager
        .apply(trident_core::Input::Activity { runner })
        .await?;
    Ok(())
}

/// A parsed boolean query flag with Poseidon's leniency: anything unparsable is `default`.
fn flag(value: Option<&String>, default: bool) -> bool {
    match value.map(|value| value.as_str()) {
        Some("true" | "1" | "t" | "T" | "TRUE" | "True") => true,
        Some("false" | "0" | "f" | "F" | "FALSE" | "False") => false,
        _ => default,
    }
}

/// Query parameters, interpreted leniently by each handler as Poseidon does.
type Query = axum::extract::Query<BTreeMap<String, String>>;
