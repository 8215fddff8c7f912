//! The typed Nomad HTTP client: the calls of `reference/nomad-api.md` §2, over hyper and a
//! pluggable [`Connector`].
//!
//! Shape of every call: one request with the configured token, namespace and region; a timeout
//! around the whole exchange (connect, headers, body); a bounded body; for idempotent calls,
//! bounded retries with jittered exponential back-off on connection errors, timeouts, 429 and
//! 5xx (`nomad-api.md` §10 rows 16 and 17). Nomad's errors are plain text with a status code
//! (§1.2), so a non-2xx answer becomes [`NomadError::Status`] with the text. Jobs travel as
//! `serde_json::Value`: building them is `jobs.rs`'s concern.
//!
//! Time comes from `tokio::time` only (the simulation pauses and advances it) and jitter from
//! the injected [`Entropy`], so the client behaves the same under turmoil, seed by seed.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;

use super::connector::{Connector, HyperConnector, MaybeTls, TcpConnector, TlsSettings};
use super::model::{
    Allocation, Evaluation, JobDeregisterResponse, JobListStub, JobRegisterResponse,
};
use super::retry::{Entropy, RetryPolicy};

/// The header that carries the ACL token (`nomad-api.md` §1.1).
const TOKEN_HEADER: &str = "X-Nomad-Token";
/// The header with the raft index of an answer (`nomad-api.md` §1.2).
const INDEX_HEADER: &str = "X-Nomad-Index";
/// How much of an error body is kept: Nomad's messages are one line or a short multierror list;
/// a proxy's HTML error page need not be carried around whole.
const ERROR_BODY_CHARS_MAX: usize = 4096;

/// How to reach Nomad.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NomadConfig {
    /// `http://host:4646` or `https://host:4646`; a path, if any, is ignored.
    pub address: String,
    /// The ACL token, sent as `X-Nomad-Token`.
    pub token: Option<String>,
    /// Sent as `namespace=` on every call (Nomad's default is `default`).
    pub namespace: Option<String>,
    /// Sent as `region=` on every call (Nomad's default is the agent's region).
    pub region: Option<String>,
    /// Bound on one attempt of a call: connect, headers and body. For the event stream, on
    /// connect and headers only.
    pub request_timeout: Duration,
    /// Retries of idempotent calls.
    pub retry: RetryPolicy,
    /// Bound on a response body. `GET /v1/allocations` of a busy namespace is the largest answer.
    pub response_bytes_max: usize,
    /// Idle connections kept per host. Nomad counts every open connection of a client IP
    /// against `http_max_conns_per_client` (default 100, `nomad-api.md` §1.5), exec websockets
    /// and the event stream included.
    pub idle_connections_max: usize,
    /// TLS material; required for `https` addresses, ignored for `http` ones.
    pub tls: Option<TlsSettings>,
}

impl NomadConfig {
    /// A configuration with defaults around `address`.
    pub fn new(address: impl Into<String>) -> Self {
        NomadConfig {
            address: address.into(),
            token: None,
            namespace: None,
            region: None,
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            response_bytes_max: 64 << 20,
            idle_connections_max: 8,
            tls: None,
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum NomadError {
    /// The configuration is unusable (address, token characters, TLS material).
    #[error("invalid Nomad client configuration: {0}")]
    Config(String),
    /// Nomad could not be reached, or the connection broke before the answer was complete.
    #[error("cannot talk to Nomad: {0}")]
    Connection(String),
    /// An attempt took longer than the request timeout.
    #[error("Nomad did not answer within {0:?}")]
    Timeout(Duration),
    /// Nomad answered with a non-success status; `body` is its plain-text message.
    #[error("Nomad answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// Nomad's message (trimmed, at most 4096 characters).
        body: String,
    },
    /// The answer exceeded [`NomadConfig::response_bytes_max`].
    #[error("Nomad's answer exceeds {0} bytes")]
    TooLarge(usize),
    /// The answer was not what the call expects.
    #[error("cannot decode Nomad's answer to {what}: {source}")]
    Decode {
        /// Which call.
        what: &'static str,
        /// The decoder's complaint.
        source: serde_json::Error,
    },
}

impl NomadError {
    /// The HTTP status, for [`NomadError::Status`].
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            NomadError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether another attempt of an idempotent call may succeed: connection trouble, a timeout,
    /// Nomad's connection limiter (429) and server errors, except the 500s that Nomad uses for
    /// permanent failures (job validation, `EnforceIndex` conflicts, `nomad-api.md` §1.4).
    pub fn is_transient(&self) -> bool {
        match self {
            NomadError::Connection(_) | NomadError::Timeout(_) => true,
            NomadError::Status { status, body } => {
                *status == StatusCode::TOO_MANY_REQUESTS
                    || (status.is_server_error() && !is_permanent_server_error(body))
            }
            NomadError::Config(_) | NomadError::TooLarge(_) | NomadError::Decode { .. } => false,
        }
    }

    /// Whether Nomad said the object does not exist: a 404 with a message (`job not found`,
    /// `alloc not found`, `eval not found`). A 404 with an empty body is an unknown URL (a
    /// wrong address or API version) and stays an error.
    fn is_object_not_found(&self) -> bool {
        matches!(self, NomadError::Status { status, body }
            if *status == StatusCode::NOT_FOUND && !body.is_empty())
    }
}

/// Nomad's 500s that no retry can fix (`nomad-api.md` §1.4, §3.1): validation and conflicts.
fn is_permanent_server_error(body: &str) -> bool {
    const PERMANENT: [&str; 6] = [
        "validation failed",
        "Enforcing job modify index",
        "nonexistent namespace",
        "cannot update job from type",
        "contains a space",
        "Unknown allocation",
    ];
    PERMANENT.iter().any(|text| body.contains(text))
}

/// An answer together with its `X-Nomad-Index` (0 when absent): the raft index the answer is
/// current as of, which the allocation tracker and the event stream's start position use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Indexed<T> {
    /// The answer.
    pub value: T,
    /// Its raft index.
    pub index: u64,
}

/// Options of `GET /v1/allocations`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllocationQuery {
    /// Allocation id prefix (Nomad wants an even number of hex digits).
    pub prefix: Option<String>,
    /// List every namespace (`namespace=*`) instead of the configured one.
    pub all_namespaces: bool,
    /// Include `AllocatedResources` (the port mappings) in the stubs.
    pub resources: bool,
    /// Leave `TaskStates` out of the stubs (`task_states=false`, §5.1). Task states (events
    /// included) are most of a stub; statuses, links and ports are all a recovery reads.
    pub omit_task_states: bool,
}

/// The typed Nomad client. Cheap to clone: clones share the connection pool and the entropy.
pub struct NomadClient<C: Connector> {
    http: Client<HyperConnector<C>, Full<Bytes>>,
    base: String,
    token: Option<HeaderValue>,
    namespace: Option<String>,
    region: Option<String>,
    request_timeout: Duration,
    retry: RetryPolicy,
    response_bytes_max: usize,
    entropy: Arc<Mutex<dyn Entropy>>,
}

impl<C: Connector> Clone for NomadClient<C> {
    fn clone(&self) -> Self {
        NomadClient {
            http: self.http.clone(),
            base: self.base.clone(),
            token: self.token.clone(),
            namespace: self.namespace.clone(),
            region: self.region.clone(),
            request_timeout: self.request_timeout,
            retry: self.retry,
            response_bytes_max: self.response_bytes_max,
            entropy: Arc::clone(&self.entropy),
        }
    }
}

impl<C: Connector> fmt::Debug for NomadClient<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token stays out of logs.
        f.debug_struct("NomadClient")
            .field("base", &self.base)
            .field("namespace", &self.namespace)
            .field("region", &self.region)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// The production connector for `config`: tokio TCP, with TLS when the address is `https`.
pub fn tcp_connector(config: &NomadConfig) -> Result<MaybeTls<TcpConnector>, NomadError> {
    let https = config.address.starts_with("https://");
    match (&config.tls, https) {
        (Some(settings), true) => MaybeTls::tls(TcpConnector, settings)
            .map_err(|error| NomadError::Config(error.to_string())),
        (None, true) => Err(NomadError::Config(
            "an https address needs TLS settings (at least a CA file)".into(),
        )),
        (_, false) => Ok(MaybeTls::plain(TcpConnector)),
    }
}

impl NomadClient<MaybeTls<TcpConnector>> {
    /// The production client: tokio TCP, with TLS when the address is `https`.
    pub fn connect_tcp(config: &NomadConfig, entropy: impl Entropy) -> Result<Self, NomadError> {
        NomadClient::new(config, tcp_connector(config)?, entropy)
    }
}

impl<C: Connector> NomadClient<C> {
    /// A client over `connector`. The address's scheme only shapes the URLs; whether TLS is
    /// spoken is the connector's business.
    pub fn new(
        config: &NomadConfig,
        connector: C,
        entropy: impl Entropy,
    ) -> Result<Self, NomadError> {
        let uri: Uri = config.address.parse().map_err(|error| {
            NomadError::Config(format!("address {:?}: {error}", config.address))
        })?;
        let scheme = match uri.scheme_str() {
            Some(scheme @ ("http" | "https")) => scheme,
            _ => {
                return Err(NomadError::Config(format!(
                    "address {:?} must start with http:// or https://",
                    config.address
                )));
            }
        };
        let authority = uri.authority().ok_or_else(|| {
            NomadError::Config(format!("address {:?} has no host", config.address))
        })?;
        let token = config
            .token
            .as_deref()
            // Nomad trims the token (`nomad-api.md` §1.1); trimming here keeps a stray newline
            // from a token file out of the header.
            .map(|token| HeaderValue::from_str(token.trim()))
            .transpose()
            .map_err(|_| {
                NomadError::Config("the token has characters a header cannot carry".into())
            })?
            .map(|mut value| {
                value.set_sensitive(true);
                value
            });
        if config.retry.attempts_max == 0 {
            return Err(NomadError::Config(
                "retry.attempts_max must be at least 1".into(),
            ));
        }
        let http = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(config.idle_connections_max)
            .build(HyperConnector(connector));
        Ok(NomadClient {
            http,
            base: format!("{scheme}://{authority}"),
            token,
            namespace: config.namespace.clone(),
            region: config.region.clone(),
            request_timeout: config.request_timeout,
            retry: config.retry,
            response_bytes_max: config.response_bytes_max,
            entropy: Arc::new(Mutex::new(entropy)),
        })
    }

    /// Registers (creates or updates) a job: `PUT /v1/jobs` with `{"Job": job}` (§3.1).
    ///
    /// Retried like a read: registering the same job again changes nothing but creates one more
    /// evaluation (§3.1, "spec unchanged"), which is harmless.
    pub async fn register_job(
        &self,
        job: &serde_json::Value,
    ) -> Result<JobRegisterResponse, NomadError> {
        let body = serde_json::to_vec(&serde_json::json!({ "Job": job })).map_err(|source| {
            NomadError::Decode {
                what: "register job (encoding)",
                source,
            }
        })?;
        let response = self
            .call(
                Method::PUT,
                "/v1/jobs",
                Query::new(),
                Some(Bytes::from(body)),
            )
            .await?;
        decode("register job", &response.body)
    }

    /// Reads a job (`GET /v1/job/:id`, §3.3); `None` when Nomad does not know it.
    pub async fn read_job(
        &self,
        id: &str,
    ) -> Result<Option<Indexed<serde_json::Value>>, NomadError> {
        let path = format!("/v1/job/{}", encode(id));
        self.read_optional("read job", &path, Query::new()).await
    }

    /// Lists the jobs whose id starts with `prefix` (`GET /v1/jobs?prefix=`, §3.4). With
    /// `meta`, each stub carries the job-level `Meta` (`meta=true`, §3.4), so N runners and their
    /// marks come back in one call instead of a list and N reads.
    pub async fn list_jobs(
        &self,
        prefix: &str,
        meta: bool,
    ) -> Result<Indexed<Vec<JobListStub>>, NomadError> {
        let mut query = Query::new();
        query.push("prefix", prefix);
        if meta {
            query.push("meta", "true");
        }
        let response = self.call(Method::GET, "/v1/jobs", query, None).await?;
        Ok(Indexed {
            value: decode_list("list jobs", &response.body)?,
            index: response.index,
        })
    }

    /// Deletes a job (`DELETE /v1/job/:id`, with `purge=true` it is gone at once, §3.5). Nomad
    /// answers 200 for an unknown job, so deleting twice is fine.
    pub async fn delete_job(
        &self,
        id: &str,
        purge: bool,
    ) -> Result<JobDeregisterResponse, NomadError> {
        let path = format!("/v1/job/{}", encode(id));
        let mut query = Query::new();
        query.push("purge", if purge { "true" } else { "false" });
        let response = self.call(Method::DELETE, &path, query, None).await?;
        decode("delete job", &response.body)
    }

    /// Lists allocations (`GET /v1/allocations`, §5.1): the stubs, with the raft index to seed
    /// the allocation tracker with.
    pub async fn list_allocations(
        &self,
        options: &AllocationQuery,
    ) -> Result<Indexed<Vec<Allocation>>, NomadError> {
        let mut query = Query::new();
        if let Some(prefix) = &options.prefix {
            query.push("prefix", prefix);
        }
        if options.all_namespaces {
            query.namespace = Some("*".into());
        }
        if options.resources {
            query.push("resources", "true");
        }
        if options.omit_task_states {
            query.push("task_states", "false");
        }
        let response = self
            .call(Method::GET, "/v1/allocations", query, None)
            .await?;
        Ok(Indexed {
            value: decode_list("list allocations", &response.body)?,
            index: response.index,
        })
    }

    /// The allocations of one job (`GET /v1/job/:id/allocations`, §3.6), newest first (by
    /// `CreateIndex` descending, as the Go client sorts them). `all = false` hides allocations
    /// of an earlier job with the same id. An unknown job has none (Nomad answers `[]`).
    pub async fn job_allocations(
        &self,
        job_id: &str,
        all: bool,
    ) -> Result<Indexed<Vec<Allocation>>, NomadError> {
        let path = format!("/v1/job/{}/allocations", encode(job_id));
        let mut query = Query::new();
        query.push("all", if all { "true" } else { "false" });
        let response = self.call(Method::GET, &path, query, None).await?;
        let mut allocations: Vec<Allocation> = decode_list("job allocations", &response.body)?;
        allocations.sort_by_key(|allocation| std::cmp::Reverse(allocation.create_index));
        Ok(Indexed {
            value: allocations,
            index: response.index,
        })
    }

    /// The evaluations of one job (`GET /v1/job/:id/evaluations`, §3.6), in Nomad's order. An
    /// unknown job has none. The inventory asks for them only for runner jobs without any
    /// allocation: whether their placement is still to come or failed, only these say.
    pub async fn job_evaluations(
        &self,
        job_id: &str,
    ) -> Result<Indexed<Vec<Evaluation>>, NomadError> {
        let path = format!("/v1/job/{}/evaluations", encode(job_id));
        let response = self.call(Method::GET, &path, Query::new(), None).await?;
        Ok(Indexed {
            value: decode_list("job evaluations", &response.body)?,
            index: response.index,
        })
    }

    /// Reads one allocation (`GET /v1/allocation/:id`, §5.1); `None` when Nomad does not know
    /// it.
    pub async fn read_allocation(
        &self,
        id: &str,
    ) -> Result<Option<Indexed<Allocation>>, NomadError> {
        let path = format!("/v1/allocation/{}", encode(id));
        self.read_optional("read allocation", &path, Query::new())
            .await
    }

    /// Reads one evaluation (`GET /v1/evaluation/:id`, §4): the fallback when the event stream
    /// missed an evaluation's end (§10 row 13). `None` when Nomad does not know it.
    pub async fn read_evaluation(
        &self,
        id: &str,
    ) -> Result<Option<Indexed<Evaluation>>, NomadError> {
        let path = format!("/v1/evaluation/{}", encode(id));
        self.read_optional("read evaluation", &path, Query::new())
            .await
    }

    /// Opens `GET <path>` for streaming: the headers within the request timeout, the body left
    /// to the caller. Not retried: the event stream has its own reconnect loop.
    pub(crate) async fn open_stream(
        &self,
        path: &str,
        query: Query,
    ) -> Result<Incoming, NomadError> {
        let request = self.request(&Method::GET, path, &query, None)?;
        let timeout = self.request_timeout;
        let attempt = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|error| NomadError::Connection(error_chain(&error)))?;
            let status = response.status();
            let body = response.into_body();
            if status.is_success() {
                return Ok(body);
            }
            let text = read_body(body, self.response_bytes_max).await?;
            Err(status_error(status, &text))
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| NomadError::Timeout(timeout))?
    }

    /// One random word from the shared entropy, for jitter.
    pub(crate) fn random(&self) -> u64 {
        self.entropy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .next_u64()
    }

    async fn read_optional<T: DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
        query: Query,
    ) -> Result<Option<Indexed<T>>, NomadError> {
        match self.call(Method::GET, path, query, None).await {
            Ok(response) => Ok(Some(Indexed {
                value: decode(what, &response.body)?,
                index: response.index,
            })),
            Err(error) if error.is_object_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Sends a request, retrying transient failures. Every call this client makes is
    /// idempotent (GET, DELETE, and PUT of a whole job), so every call is retried.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: Query,
        body: Option<Bytes>,
    ) -> Result<Answer, NomadError> {
        let mut attempt = 0;
        loop {
            let request = self.request(&method, path, &query, body.clone())?;
            let error = match tokio::time::timeout(self.request_timeout, self.send(request)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(error)) => error,
                Err(_) => NomadError::Timeout(self.request_timeout),
            };
            attempt += 1;
            if attempt >= self.retry.attempts_max || !error.is_transient() {
                return Err(error);
            }
            let delay = self.retry.backoff.delay(attempt - 1, self.random());
            tracing::debug!(%method, path, attempt, ?delay, %error, "retrying a Nomad call");
            tokio::time::sleep(delay).await;
        }
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Result<Answer, NomadError> {
        let response = self
            .http
            .request(request)
            .await
            .map_err(|error| NomadError::Connection(error_chain(&error)))?;
        let status = response.status();
        let index = response
            .headers()
            .get(INDEX_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        let body = read_body(response.into_body(), self.response_bytes_max).await?;
        if !status.is_success() {
            return Err(status_error(status, &body));
        }
        Ok(Answer { index, body })
    }

    fn request(
        &self,
        method: &Method,
        path: &str,
        query: &Query,
        body: Option<Bytes>,
    ) -> Result<Request<Full<Bytes>>, NomadError> {
        let mut url = format!("{}{path}", self.base);
        let namespace = query.namespace.as_deref().or(self.namespace.as_deref());
        let mut separator = '?';
        let mut push = |key: &str, value: &str| {
            url.push(separator);
            separator = '&';
            url.push_str(key);
            url.push('=');
            url.push_str(&encode(value));
        };
        for (key, value) in &query.pairs {
            push(key, value);
        }
        if let Some(namespace) = namespace {
            push("namespace", namespace);
        }
        if let Some(region) = &self.region {
            push("region", region);
        }
        let mut builder = Request::builder().method(method.clone()).uri(&url);
        if let Some(token) = &self.token {
            builder = builder.header(TOKEN_HEADER, token.clone());
        }
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|error| NomadError::Config(format!("request {url}: {error}")))
    }
}

/// Query parameters of one call, besides namespace and region.
#[derive(Clone, Debug, Default)]
pub(crate) struct Query {
    pairs: Vec<(&'static str, String)>,
    /// Overrides the configured namespace for this call (`*` lists every namespace).
    namespace: Option<String>,
}

impl Query {
    pub(crate) fn new() -> Self {
        Query::default()
    }

    pub(crate) fn push(&mut self, key: &'static str, value: impl Into<String>) {
        self.pairs.push((key, value.into()));
    }
}

/// A successful answer.
struct Answer {
    index: u64,
    body: Bytes,
}

async fn read_body(body: Incoming, bytes_max: usize) -> Result<Bytes, NomadError> {
    match Limited::new(body, bytes_max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(NomadError::TooLarge(bytes_max))
        }
        Err(error) => Err(NomadError::Connection(error.to_string())),
    }
}

fn status_error(status: StatusCode, body: &[u8]) -> NomadError {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let body = match text.char_indices().nth(ERROR_BODY_CHARS_MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    };
    NomadError::Status { status, body }
}

fn decode<T: DeserializeOwned>(what: &'static str, body: &[u8]) -> Result<T, NomadError> {
    serde_json::from_slice(body).map_err(|source| NomadError::Decode { what, source })
}

/// Lists are `[]` when empty, never `null` (§3.4, §5.1); a `null` is still read as empty.
fn decode_list<T: DeserializeOwned>(what: &'static str, body: &[u8]) -> Result<Vec<T>, NomadError> {
    Ok(decode::<Option<Vec<T>>>(what, body)?.unwrap_or_default())
}

/// hyper-util's errors say "client error (Connect)" and keep the cause in their source chain.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Percent-encodes a path segment or query value: everything but RFC 3986's unreserved
/// characters, so a job id can never reach into the path or the query.
pub(crate) fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_keeps_ids_inside_their_segment() {
        assert_eq!(encode("12-0b7e41f2_a.b~c"), "12-0b7e41f2_a.b~c");
        assert_eq!(encode("a/../b?c=d"), "a%2F..%2Fb%3Fc%3Dd");
        assert_eq!(encode("Job:*"), "Job%3A%2A");
        assert_eq!(encode("ä"), "%C3%A4");
    }

    #[test]
    fn transient_errors_are_connection_timeouts_429_and_most_5xx() {
        let status = |code: u16, body: &str| NomadError::Status {
            status: StatusCode::from_u16(code).expect("a valid code"),
            body: body.into(),
        };
        assert!(NomadError::Connection("reset".into()).is_transient());
        assert!(NomadError::Timeout(Duration::from_secs(1)).is_transient());
        assert!(status(429, "Your IP is issuing too many concurrent connections").is_transient());
        assert!(status(500, "No cluster leader").is_transient());
        assert!(status(503, "").is_transient());
        assert!(
            !status(
                500,
                "1 error occurred:\n\t* Task group default-group validation failed"
            )
            .is_transient()
        );
        assert!(
            !status(
                500,
                "Enforcing job modify index 3: job exists with conflicting job modify index: 4"
            )
            .is_transient()
        );
        assert!(!status(400, "Job ID hasn't been provided").is_transient());
        assert!(!status(403, "Permission denied").is_transient());
        assert!(!status(404, "job not found").is_transient());
        assert!(status(404, "job not found").is_object_not_found());
        assert!(!status(404, "").is_object_not_found());
    }

    #[test]
    fn long_error_bodies_are_cut() {
        let body = "x".repeat(ERROR_BODY_CHARS_MAX + 10);
        let NomadError::Status { body, .. } =
            status_error(StatusCode::BAD_GATEWAY, body.as_bytes())
        else {
            panic!("a status error");
        };
        assert_eq!(body.chars().count(), ERROR_BODY_CHARS_MAX + 1);
    }
}
