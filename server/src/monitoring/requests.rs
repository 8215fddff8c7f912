//! The request middleware: one `request` span per request with its route and ids as fields,
//! one debug log line when it ends (Poseidon's HTTP log: status, method, path, duration), and
//! the request's measurement.
//!
//! It sits outside authentication, so a 401 is measured too. A WebSocket upgrade (101) is not
//! measured here: the execution records `/websocket` when it ends, with the whole duration, as
//! Poseidon's blocking handler did.

use std::sync::Arc;

use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{RawPathParams, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tokio::time::Instant;
use tracing::Instrument;
use trident_core::{EnvironmentId, RunnerId};

use super::{Monitor, RequestIds};

/// What the middleware of one route knows.
#[derive(Clone, Debug)]
pub struct RouteContext {
    /// Where measurements go.
    pub monitor: Arc<Monitor>,
    /// Poseidon's name of the route (`provideRunner`, `/files`, …).
    pub name: &'static str,
    /// Whether the request body's size is recorded (file updates).
    pub records_body_size: bool,
}

/// When the request reached the middleware, for handlers that finish measuring it themselves.
#[derive(Clone, Copy, Debug)]
pub struct RequestStart(pub Instant);

/// Ids a handler learnt while serving (a claim's runner), put into its response's extensions.
#[derive(Clone, Copy, Debug)]
pub struct LearntIds(pub RequestIds);

/// The ids in the route's path: `{runner}` (which names its environment too) or
/// `{environment}`. Malformed ones are ignored: the handler answers them.
fn path_ids(params: &Result<RawPathParams, RawPathParamsRejection>) -> RequestIds {
    let mut ids = RequestIds::default();
    let Ok(params) = params else {
        return ids;
    };
    for (name, value) in params {
        match name {
            "runner" => {
                if let Ok(runner) = value.parse::<RunnerId>() {
                    ids.runner = Some(runner);
                    ids.environment = Some(runner.environment());
                }
            }
            "environment" => {
                if let Ok(id) = value.parse::<u64>() {
                    ids.environment = Some(EnvironmentId(id));
                }
            }
            _ => {}
        }
    }
    ids
}

/// Measures and traces one request.
pub async fn measure(
    State(route): State<RouteContext>,
    params: Result<RawPathParams, RawPathParamsRejection>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let ids = path_ids(&params);
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        route = route.name,
        runner_id = tracing::field::Empty,
        environment_id = tracing::field::Empty,
    );
    record_ids(&span, ids);
    let body_size = route
        .records_body_size
        .then(|| {
            request
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<u64>().ok())
        })
        .flatten();
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    request.extensions_mut().insert(RequestStart(started));
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    let mut ids = ids;
    if let Some(LearntIds(learnt)) = response.extensions().get::<LearntIds>() {
        ids.runner = learnt.runner.or(ids.runner);
        ids.environment = learnt.environment.or(ids.environment);
        record_ids(&span, ids);
    }
    let duration = started.elapsed();
    tracing::debug!(
        parent: &span,
        code = status.as_u16(),
        %method,
        path = %path.replace(['\r', '\n'], ""),
        duration_us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
        "request"
    );
    if status != StatusCode::SWITCHING_PROTOCOLS {
        route
            .monitor
            .request(route.name, status.as_u16(), duration, ids, body_size);
    }
    response
}

fn record_ids(span: &tracing::Span, ids: RequestIds) {
    if let Some(runner) = ids.runner {
        span.record("runner_id", tracing::field::display(runner));
    }
    if let Some(environment) = ids.environment {
        span.record("environment_id", tracing::field::display(environment));
    }
}
