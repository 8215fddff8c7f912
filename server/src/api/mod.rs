//! Poseidon's HTTP and WebSocket API (`reference/poseidon.md` §1–2), one module per resource.
//!
//! Every error leaves through [`ApiError`], the one place that maps failures to status codes and
//! Poseidon's bodies: `{"message"}` for client errors, `{"message","errorCode"}` for server
//! errors.

pub mod bodies;
mod environments;
mod executions;
pub use executions::Executions;
mod files;
mod health;
pub mod openapi;
mod operations;
mod runners;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use serde::Serialize;
use subtle::ConstantTimeEq;
use trident_backends::Executor;
use trident_core::{ExecutionId, IdSource, RunnerId};

use crate::driver::{ManagerHandle, Stopped};
use crate::monitoring::Monitor;
use crate::monitoring::requests::{RouteContext, measure};
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
    /// Where measurements go.
    pub monitor: Arc<Monitor>,
    /// The executions' WebSocket tasks, ended and awaited at shutdown.
    pub executions: Executions,
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

/// One route: its method and path, Poseidon's name for it (measurements and spans), whether it
/// is open (no token needed), and its handler. [`routes`] lists them all; the router and the
/// OpenAPI test are both built from that list.
pub struct Route<E> {
    /// The HTTP method.
    pub method: Method,
    /// The full path, axum's syntax (`/api/v1/runners/{runner}`).
    pub path: &'static str,
    /// Poseidon's route name (`provideRunner`, `/files`, …), Trident's for its own routes.
    pub name: &'static str,
    /// Reachable without `Poseidon-Token`.
    pub open: bool,
    handler: MethodRouter<Arc<AppState<E>>>,
}

impl<E> std::fmt::Debug for Route<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("name", &self.name)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

fn route<E, H, T>(
    method: Method,
    path: &'static str,
    name: &'static str,
    open: bool,
    handler: H,
) -> Route<E>
where
    E: Executor,
    H: axum::handler::Handler<T, Arc<AppState<E>>>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("a method axum can route");
    Route {
        method,
        path,
        name,
        open,
        handler: axum::routing::on(filter, handler),
    }
}

/// Every route the server answers: Poseidon's API under `/api/v1` (names from its §8.1
/// measurements), plus Trident's readiness, metrics and OpenAPI routes.
pub fn routes<E: Executor>() -> Vec<Route<E>> {
    const OPEN: bool = true;
    const TOKEN: bool = false;
    vec![
        route(
            Method::GET,
            "/api/v1/health",
            "/health",
            OPEN,
            health::health::<E>,
        ),
        route(
            Method::GET,
            "/api/v1/version",
            "/version",
            OPEN,
            health::version::<E>,
        ),
        route(
            Method::GET,
            "/api/v1/ready",
            "/ready",
            OPEN,
            operations::ready::<E>,
        ),
        route(
            Method::GET,
            "/api/v1/openapi.json",
            "/openapi.json",
            OPEN,
            operations::openapi,
        ),
        route(
            Method::GET,
            "/metrics",
            "/metrics",
            OPEN,
            operations::metrics::<E>,
        ),
        route(
            Method::GET,
            "/api/v1/statistics/execution-environments",
            "/execution-environments",
            TOKEN,
            health::statistics::<E>,
        ),
        route(
            Method::POST,
            "/api/v1/runners",
            "provideRunner",
            TOKEN,
            runners::claim::<E>,
        ),
        route(
            Method::DELETE,
            "/api/v1/runners/{runner}",
            "deleteRunner",
            TOKEN,
            runners::release::<E>,
        ),
        route(
            Method::GET,
            "/api/v1/runners/{runner}/files",
            "/files_list",
            TOKEN,
            files::list::<E>,
        ),
        route(
            Method::PATCH,
            "/api/v1/runners/{runner}/files",
            FILES_UPDATE,
            TOKEN,
            files::update::<E>,
        ),
        route(
            Method::GET,
            "/api/v1/runners/{runner}/files/raw",
            "/files/raw",
            TOKEN,
            files::download::<E>,
        ),
        route(
            Method::POST,
            "/api/v1/runners/{runner}/execute",
            "/execute",
            TOKEN,
            executions::execute::<E>,
        ),
        route(
            Method::GET,
            "/api/v1/runners/{runner}/websocket",
            WEBSOCKET,
            TOKEN,
            executions::websocket::<E>,
        ),
        route(
            Method::GET,
            "/api/v1/execution-environments",
            "list",
            TOKEN,
            environments::list::<E>,
        ),
        route(
            Method::GET,
            "/api/v1/execution-environments/{environment}",
            "get",
            TOKEN,
            environments::get::<E>,
        ),
        route(
            Method::PUT,
            "/api/v1/execution-environments/{environment}",
            "createOrUpdate",
            TOKEN,
            environments::put::<E>,
        ),
        route(
            Method::DELETE,
            "/api/v1/execution-environments/{environment}",
            "delete",
            TOKEN,
            environments::delete::<E>,
        ),
    ]
}

/// Poseidon's name of the file update route, whose body size is measured.
const FILES_UPDATE: &str = "/files";
/// Poseidon's name of the execution WebSocket, measured when the execution ends.
pub(crate) const WEBSOCKET: &str = "/websocket";

/// Builds the router from [`routes`]: each route measured and traced (outermost, so a 401 is
/// measured too), then authenticated unless it is open.
pub fn router<E: Executor>(state: Arc<AppState<E>>) -> Router {
    let mut router = Router::new();
    for route in routes::<E>() {
        let mut handler = route.handler;
        if !route.open {
            handler = handler.route_layer(middleware::from_fn_with_state(
                Arc::clone(&state),
                authenticate::<E>,
            ));
        }
        let context = RouteContext {
            monitor: Arc::clone(&state.monitor),
            name: route.name,
            records_body_size: route.name == FILES_UPDATE,
        };
        handler = handler.route_layer(middleware::from_fn_with_state(context, measure));
        router = router.route(route.path, handler);
    }
    router
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(state)
}

/// Checks `Poseidon-Token` in constant time; the open routes (`/health`, `/version`, readiness,
/// metrics, the OpenAPI document) are not behind it.
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
    /// 503: the first recovery has not finished (readiness).
    #[error("the first recovery has not finished")]
    NotReady,
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
            ApiError::ShuttingDown | ApiError::NotReady => client(StatusCode::SERVICE_UNAVAILABLE),
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
