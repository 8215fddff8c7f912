//! The HTTP routes (`nomad-api.md` §1–§6 and §8): JSON answers with `X-Nomad-Index`, plain-text
//! errors, the ACL token check and the HTTP fault knob, all in one place.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde_json::Value;

use super::FakeNomad;
use super::events::{StreamFilter, Subscription};
use super::state::ApiError;

/// Query parameters as `(key, value)` pairs: `topic` repeats.
type Params = Query<Vec<(String, String)>>;

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Go's `strconv.ParseBool` on a flag that may be present without value (`?purge`).
fn flag(params: &[(String, String)], key: &str) -> bool {
    param(params, key).is_some_and(|v| matches!(v, "" | "1" | "t" | "T" | "true" | "TRUE" | "True"))
}

fn namespace(params: &[(String, String)]) -> String {
    param(params, "namespace")
        .filter(|ns| !ns.is_empty())
        .unwrap_or("default")
        .to_owned()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        text(self.status, self.message)
    }
}

fn text(status: u16, message: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "text/plain")], message).into_response()
}

/// A JSON answer with Nomad's read headers (§1.2).
fn json(value: &Value, index: u64) -> Response {
    // serde_json's own writer, not `Display` (which goes through `fmt` a piece at a time).
    json_bytes(
        serde_json::to_vec(value).expect("a Value always serialises"),
        index,
    )
}

/// [`json`] for a body already serialised.
fn json_bytes(body: Vec<u8>, index: u64) -> Response {
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    let headers = response.headers_mut();
    headers.insert("X-Nomad-Index", HeaderValue::from(index));
    headers.insert("X-Nomad-KnownLeader", HeaderValue::from_static("true"));
    headers.insert("X-Nomad-LastContact", HeaderValue::from_static("0"));
    response
}

pub(super) fn router(nomad: FakeNomad) -> Router {
    Router::new()
        .route("/v1/jobs", get(list_jobs).put(register).post(register))
        .route("/v1/job/{id}", get(read_job).delete(deregister))
        .route("/v1/job/{id}/allocations", get(job_allocations))
        .route("/v1/job/{id}/evaluations", get(job_evaluations))
        .route("/v1/allocations", get(list_allocations))
        .route("/v1/allocation/{id}", get(read_allocation))
        .route("/v1/evaluation/{id}", get(read_evaluation))
        .route("/v1/node/{id}", get(read_node))
        .route("/v1/event/stream", get(event_stream))
        .route(
            "/v1/client/allocation/{id}/exec",
            get(super::exec::exec_handler),
        )
        .layer(middleware::from_fn_with_state(nomad.clone(), gate))
        .with_state(nomad)
}

/// The HTTP fault knob first, then the token check (§1.1, §10 rows 16–18).
async fn gate(State(nomad): State<FakeNomad>, request: Request, next: Next) -> Response {
    let route = route_of(request.method().as_str(), request.uri().path());
    let (injected, token) = {
        let mut state = nomad.lock();
        *state.requests.entry(route).or_default() += 1;
        let injected = if state.faults.http_errors_left > 0 {
            state.faults.http_errors_left -= 1;
            Some(state.faults.http_error_status)
        } else {
            None
        };
        (injected, state.config.acl_token.clone())
    };
    if let Some(status) = injected {
        return match status {
            429 => {
                let mut response = text(
                    429,
                    "Your IP is issuing too many concurrent connections, please rate limit your calls\n"
                        .into(),
                );
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                response
            }
            403 => text(403, "Permission denied".into()),
            other => text(other, "No cluster leader".into()),
        };
    }
    if let Some(expected) = token {
        match request_token(request.headers()) {
            None => return text(403, "Permission denied".into()),
            Some(given) if given != expected => return text(403, "ACL token not found".into()),
            Some(_) => {}
        }
    }
    next.run(request).await
}

/// The counter key of a request: `METHOD /route`, with the ids of the routes above as `:id`,
/// so that the counters stay few whatever the ids. Unknown paths share one key.
fn route_of(method: &str, path: &str) -> String {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let route = match segments.as_slice() {
        ["v1", "jobs"] => "/v1/jobs",
        ["v1", "job", _] => "/v1/job/:id",
        ["v1", "job", _, "allocations"] => "/v1/job/:id/allocations",
        ["v1", "job", _, "evaluations"] => "/v1/job/:id/evaluations",
        ["v1", "allocations"] => "/v1/allocations",
        ["v1", "allocation", _] => "/v1/allocation/:id",
        ["v1", "evaluation", _] => "/v1/evaluation/:id",
        ["v1", "node", _] => "/v1/node/:id",
        ["v1", "event", "stream"] => "/v1/event/stream",
        ["v1", "client", "allocation", _, "exec"] => "/v1/client/allocation/:id/exec",
        _ => "(other)",
    };
    format!("{method} {route}")
}

fn request_token(headers: &HeaderMap) -> Option<String> {
    if let Some(token) = headers.get("X-Nomad-Token").and_then(|v| v.to_str().ok()) {
        return Some(token.trim().to_owned());
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|token| token.trim().to_owned())
}

async fn register(State(nomad): State<FakeNomad>, Query(params): Params, body: Bytes) -> Response {
    if body.is_empty() {
        return text(400, "Request body is empty".into());
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(error) => return text(400, format!("json: cannot unmarshal request body: {error}")),
    };
    let result = nomad.lock().register(&namespace(&params), &body);
    match result {
        Ok(response) => {
            let index = response["Index"].as_u64().unwrap_or(0);
            json(&response, index)
        }
        Err(error) => error.into_response(),
    }
}

async fn list_jobs(State(nomad): State<FakeNomad>, Query(params): Params) -> Response {
    let prefix = param(&params, "prefix").unwrap_or_default();
    let (jobs, index) = nomad
        .lock()
        .list_jobs(&namespace(&params), prefix, flag(&params, "meta"));
    json(&jobs, index)
}

async fn read_job(
    State(nomad): State<FakeNomad>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    match nomad.lock().job(&namespace(&params), &id) {
        Some((job, index)) => json(&job, index),
        None => text(404, "job not found".into()),
    }
}

async fn deregister(
    State(nomad): State<FakeNomad>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let (response, index) =
        nomad
            .lock()
            .deregister(&namespace(&params), &id, flag(&params, "purge"));
    json(&response, index)
}

async fn job_allocations(
    State(nomad): State<FakeNomad>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let (allocs, index) =
        nomad
            .lock()
            .job_allocations(&namespace(&params), &id, flag(&params, "all"));
    json_bytes(allocs, index)
}

async fn job_evaluations(
    State(nomad): State<FakeNomad>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let (evals, index) = nomad.lock().job_evaluations(&namespace(&params), &id);
    json(&evals, index)
}

async fn list_allocations(State(nomad): State<FakeNomad>, Query(params): Params) -> Response {
    let prefix = param(&params, "prefix").unwrap_or_default();
    let task_states = param(&params, "task_states").is_none() || flag(&params, "task_states");
    let (allocs, index) = nomad.lock().list_allocations(
        &namespace(&params),
        prefix,
        flag(&params, "resources"),
        task_states,
    );
    json_bytes(allocs, index)
}

async fn read_allocation(State(nomad): State<FakeNomad>, Path(id): Path<String>) -> Response {
    match nomad.lock().allocation(&id) {
        Some((alloc, index)) => json(&alloc, index),
        None => text(404, "alloc not found".into()),
    }
}

async fn read_evaluation(State(nomad): State<FakeNomad>, Path(id): Path<String>) -> Response {
    match nomad.lock().evaluation(&id) {
        Some((eval, index)) => json(&eval, index),
        None => text(404, "eval not found".into()),
    }
}

async fn read_node(State(nomad): State<FakeNomad>, Path(id): Path<String>) -> Response {
    let state = nomad.lock();
    match state.node(&id) {
        Some(node) => json(&node, state.index()),
        None => text(404, "node not found".into()),
    }
}

/// `GET /v1/event/stream` (§6): validates `index` and `topic`, then streams NDJSON.
async fn event_stream(State(nomad): State<FakeNomad>, Query(params): Params) -> Response {
    let index = match param(&params, "index") {
        None | Some("") => 0,
        Some(text_index) => match text_index.parse::<u64>() {
            Ok(index) => index,
            Err(error) => return text(400, format!("Unable to parse index: {error}")),
        },
    };
    let topics: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "topic")
        .map(|(_, v)| v.clone())
        .collect();
    let filter = match StreamFilter::parse(&topics, &namespace(&params)) {
        Ok(filter) => filter,
        Err(message) => return text(400, message),
    };
    let subscription = Subscription::new(nomad, filter, index);
    let mut response = Response::new(Body::from_stream(subscription.into_stream()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
