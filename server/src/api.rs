//! The client HTTP API (axum), in the spirit of Riak's HTTP API and Garage K2V.
//!
//! `PUT|GET|DELETE /kv/{key}`, `GET /cluster`, `GET /health`, `GET /metrics`,
//! `GET /events`, `POST /admin/leave`, `POST /admin/remove/{id}`. Handlers never touch the `Node`: they submit commands to
//! the node task through a [`Handle`] and read its published snapshot. Every error
//! is JSON `{"error": kind, "message": …, "needed": …, "got": …}`. Client limits
//! (key and value size, header and body read time) apply here only, never to
//! replication. Keys are the percent-decoded bytes of the path after `/kv/`.

use crate::config::Limits;
use crate::driver::{has_left, ClientResult, Handle, SubmitError};
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use base64::Engine as _;
use ringlab_core::{Admin, ClientOp, ClientReply, NodeId, RequestError, VersionVector};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The context header (an opaque causal context token).
pub const CONTEXT_HEADER: &str = "x-ringlab-context";

/// Shared state of the handlers.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// The node task.
    pub handle: Handle,
    /// Client limits.
    pub limits: Limits,
    /// N, to check `r=` / `w=`.
    pub n: usize,
    /// How long a handler waits for the node's answer (the core's request timeout plus slack).
    pub reply_timeout: Duration,
    /// Origins whose browser pages may read the observation routes (`*`: any).
    pub allow_origins: Vec<String>,
}

/// A JSON error body.
#[derive(Serialize, Debug)]
struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    error: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    needed: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    got: Option<usize>,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            message: message.into(),
            needed: None,
            got: None,
        }
    }

    fn quorum(self, needed: usize, got: usize) -> Self {
        ApiError {
            needed: Some(needed),
            got: Some(got),
            ..self
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(&self)).into_response()
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        let msg = e.to_string();
        match e {
            RequestError::QuorumNotReached { got, need } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "quorum_not_reached", msg)
                    .quorum(need, got)
            }
            RequestError::Unavailable { available, need } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg)
                    .quorum(need, available)
            }
            RequestError::InvalidQuorum { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_quorum", msg)
            }
            RequestError::TooManySiblings { .. } => {
                ApiError::new(StatusCode::CONFLICT, "too_many_siblings", msg)
            }
            RequestError::NoRing => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_ring", msg),
            RequestError::Storage(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", msg)
            }
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Overloaded => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", e.to_string())
            }
            SubmitError::Stopped => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopped", e.to_string())
            }
        }
    }
}

/// The router with every route and JSON fallbacks.
pub fn router(state: ApiState) -> Router {
    let state = Arc::new(state);
    // Read-only observation routes, which a browser page (the explorer's Live tab)
    // may read cross-origin when the origin is allowed. The CORS layer stays off
    // the /kv path and the admin routes.
    let observe = Router::new()
        .route("/cluster", get(cluster))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/events", get(events))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            allow_origin,
        ));
    Router::new()
        .route("/kv", any(missing_key))
        .route("/kv/", any(missing_key))
        .route("/kv/{*key}", any(kv))
        .merge(observe)
        .route("/admin/leave", post(leave))
        .route("/admin/remove/{id}", post(remove))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Adds `Access-Control-Allow-Origin` (echoing the request's `Origin`) when that
/// origin is allowed. These are simple GETs, so browsers send no preflight.
async fn allow_origin(
    State(s): State<Arc<ApiState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let origin = req
        .headers()
        .get(axum::http::header::ORIGIN)
        .filter(|o| {
            s.allow_origins
                .iter()
                .any(|a| a == "*" || a.as_bytes() == o.as_bytes())
        })
        .cloned();
    let mut resp = next.run(req).await;
    if let Some(origin) = origin {
        let h = resp.headers_mut();
        h.insert(axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.append(axum::http::header::VARY, HeaderValue::from_static("origin"));
    }
    resp
}

/// Client connections served at once; more are answered 503 and closed, so idle
/// or slow clients cannot exhaust file descriptors the peer transport needs.
pub const MAX_CONNECTIONS: usize = 2048;

/// Serves `router` on `listener` over HTTP/1.1 until the task is dropped. Clients
/// that do not send their headers within `header_timeout` (or stay idle that long
/// between requests) are disconnected.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    header_timeout: Duration,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let body = r#"{"error":"overloaded","message":"too many client connections"}"#;
                let head = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(body.as_bytes()).await;
                })
                .await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(error = %e, "http connection ended");
            }
        });
    }
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn missing_key() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_key",
        "the key is missing: use /kv/{key}",
    )
}

async fn cluster(State(s): State<Arc<ApiState>>) -> Response {
    axum::Json(&*s.handle.view()).into_response()
}

async fn health(State(s): State<Arc<ApiState>>) -> Response {
    let view = s.handle.view();
    let status = if has_left(&view) {
        view.self_status.as_str()
    } else if view.ring_version == 0 {
        "no_ring"
    } else if view.self_status == "up" {
        "ok"
    } else {
        view.self_status.as_str()
    };
    let code = if matches!(status, "ok" | "leaving" | "joining") {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": status,
        "node": view.node,
        "ring_version": view.ring_version,
    });
    (code, axum::Json(body)).into_response()
}

async fn metrics(State(s): State<Arc<ApiState>>) -> Response {
    s.handle
        .metrics
        .set("client_queue", s.handle.queued() as i64);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.handle.metrics.render(),
    )
        .into_response()
}

/// The `kinds=` filter of `/events`: `None` for no filter (absent or empty).
fn parse_kinds(uri: &Uri) -> Result<Option<Vec<String>>, ApiError> {
    let Some(v) = query_values(uri, "kinds").next() else {
        return Ok(None);
    };
    let kinds: Vec<String> = v
        .split(',')
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(bad) = kinds
        .iter()
        .find(|k| !k.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_param",
            format!("kinds={bad:?}: event kinds are lower-case words such as hint, handoff, ring"),
        ));
    }
    Ok((!kinds.is_empty()).then_some(kinds))
}

/// What `/events` streams, from its `peers=` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerLines {
    /// Core events only (no `peers=`, `0`, `false`).
    Off,
    /// Core events and peer lines (`1`, `true`).
    With,
    /// Peer lines only (`only`): a page drawing every member's traffic attaches
    /// to each of them without taking their events too.
    Only,
}

fn parse_peers(uri: &Uri) -> Result<PeerLines, ApiError> {
    match query_values(uri, "peers").last() {
        None | Some("0" | "false") => Ok(PeerLines::Off),
        Some("1" | "true" | "") => Ok(PeerLines::With),
        Some("only") => Ok(PeerLines::Only),
        Some(bad) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_param",
            format!("peers={bad:?}: expected 1, 0 or only"),
        )),
    }
}

/// `GET /events[?kinds=hint,handoff,…][&peers=1|only]`: this node's core events as
/// server-sent events, from the moment of the request, each `data:` line the JSON
/// of one [`crate::driver::EventLine`]. With `peers=1` the stream also carries
/// `event: peer` messages, one per peer message this node sends or receives
/// (sampled, see [`crate::peer_stream`]), and with `peers=only` nothing else;
/// `kinds=` filters core events only. A
/// subscriber that falls more than [`crate::driver::EVENT_BUFFER`] events behind
/// gets an `event: lagged` message with the number skipped and continues with the
/// newest; the node never waits.
async fn events(State(s): State<Arc<ApiState>>, uri: Uri) -> Result<Response, ApiError> {
    use axum::response::sse::{Event as Sse, KeepAlive};
    use tokio::sync::broadcast::error::RecvError;
    let kinds = parse_kinds(&uri)?;
    let lines = parse_peers(&uri)?;
    let peers = (lines != PeerLines::Off).then(|| s.handle.subscribe_peers());
    let rx = (lines != PeerLines::Only).then(|| s.handle.subscribe());
    let stream = futures_util::stream::unfold(
        (rx, peers, kinds),
        |(mut rx, mut peers, kinds)| async move {
            loop {
                let item = tokio::select! {
                    line = recv_if_subscribed(rx.as_mut()) => match line {
                        Ok(line) => {
                            if kinds
                                .as_ref()
                                .is_some_and(|k| !k.iter().any(|k| k == line.kind))
                            {
                                continue;
                            }
                            Sse::default().data(line.json.as_str())
                        }
                        Err(RecvError::Lagged(n)) => Sse::default().event("lagged").data(n.to_string()),
                        Err(RecvError::Closed) => return None,
                    },
                    line = recv_if_subscribed(peers.as_mut()) => match line {
                        Ok(line) => Sse::default().event("peer").data(line.as_str()),
                        Err(RecvError::Lagged(n)) => Sse::default().event("lagged").data(n.to_string()),
                        Err(RecvError::Closed) => return None,
                    },
                };
                return Some((Ok::<_, std::convert::Infallible>(item), (rx, peers, kinds)));
            }
        },
    );
    Ok(axum::response::Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The next item of `rx`, or never when this stream did not subscribe to it.
async fn recv_if_subscribed<T: Clone>(
    rx: Option<&mut tokio::sync::broadcast::Receiver<T>>,
) -> Result<T, tokio::sync::broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn leave(State(s): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    s.handle.admin(Admin::Leave).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({
            "status": "leaving",
            "message": "partitions are being handed over; the node stops serving once it has left",
        })),
    )
        .into_response())
}

/// Takes a dead member out of the ring (Riak's `force-remove`, Cassandra's
/// `removenode`): its partitions are reassigned and their new owners pull them from
/// the surviving replicas. Refused for a member this node can reach — a live node
/// should leave, handing its data over itself — and for this node (use leave).
async fn remove(
    State(s): State<Arc<ApiState>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = id.map(|Path(id)| id).unwrap_or_default();
    let node = NodeId::parse(&id).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_node",
            format!("{id:?} is not a node id"),
        )
    })?;
    let view = s.handle.view();
    if node.name() == view.node {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "remove_self",
            "a node cannot remove itself: POST /admin/leave hands its data over",
        ));
    }
    let Some(member) = view.nodes.iter().find(|m| m.id == node.name()) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_node",
            format!("{node} is not a member of this node's cluster view"),
        ));
    };
    match member.status.as_str() {
        "unreachable" | "dead" | "removed" => {}
        status => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "node_not_down",
                format!(
                    "{node} is {status} as seen from here; only a node this node cannot \
                     reach may be removed (a live node leaves with POST /admin/leave)"
                ),
            ))
        }
    }
    s.handle.admin(Admin::Remove { node }).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({
            "node": node.name(),
            "status": "removed",
            "message": "its partitions are reassigned and rebuilt from the other replicas",
        })),
    )
        .into_response())
}

/// Decodes `%XX` escapes; `None` for a malformed escape.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The key of a `/kv/...` URI, checked against the limits.
fn parse_key(uri: &Uri, limits: &Limits) -> Result<Bytes, ApiError> {
    let raw = uri.path().strip_prefix("/kv/").unwrap_or_default();
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "invalid_key", m);
    let bytes = percent_decode(raw).ok_or_else(|| bad("malformed percent-encoding in the key"))?;
    if std::str::from_utf8(&bytes).is_err() {
        return Err(bad("the key is not valid UTF-8 after percent-decoding"));
    }
    if bytes.is_empty() {
        return Err(bad("the key is empty"));
    }
    if bytes.len() > limits.max_key_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "key_too_large",
            format!(
                "the key has {} bytes, the limit is {}",
                bytes.len(),
                limits.max_key_bytes
            ),
        ));
    }
    Ok(Bytes::from(bytes))
}

/// The values of query parameter `name`, in order (`name` alone counts as empty).
fn query_values<'a>(uri: &'a Uri, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Reads `r=` or `w=` from the query (other parameters are ignored).
fn parse_quorum(uri: &Uri, name: &str, n: usize) -> Result<Option<usize>, ApiError> {
    let mut found = None;
    for v in query_values(uri, name) {
        let value = v.parse::<usize>().ok().filter(|v| (1..=n).contains(v));
        match value {
            Some(v) => found = Some(v),
            None => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_param",
                    format!("{name}={v:?} must be a number between 1 and n={n}"),
                ))
            }
        }
    }
    Ok(found)
}

/// The optional context header.
fn parse_context(headers: &HeaderMap) -> Result<Option<VersionVector>, ApiError> {
    let Some(v) = headers.get(CONTEXT_HEADER) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_context",
            "X-Ringlab-Context is not a context token returned by this API",
        )
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    if s.is_empty() {
        return Ok(None);
    }
    VersionVector::from_token(s).map(Some).ok_or_else(bad)
}

/// Reads the body within the limit and the read timeout.
async fn read_body(body: Body, headers: &HeaderMap, limits: &Limits) -> Result<Bytes, ApiError> {
    let too_large = |n: Option<u64>| {
        let size = n.map_or("more than the limit".to_owned(), |n| format!("{n} bytes"));
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!(
                "the value has {size}, the limit is {} bytes",
                limits.max_value_bytes
            ),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_value_bytes as u64) {
        return Err(too_large(declared));
    }
    match tokio::time::timeout(
        limits.read_timeout,
        axum::body::to_bytes(body, limits.max_value_bytes),
    )
    .await
    {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} s",
                limits.read_timeout.as_secs()
            ),
        )),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            // to_bytes reports the length limit as an error whose source chain names it.
            let limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if limit {
                Err(too_large(None))
            } else {
                Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("could not read the request body: {e}"),
                ))
            }
        }
    }
}

fn context_value(vv: &VersionVector) -> Option<HeaderValue> {
    if vv.is_empty() {
        return None;
    }
    HeaderValue::from_str(&vv.to_token()).ok()
}

/// The sibling list of a 300 answer.
#[derive(Serialize)]
struct Siblings {
    context: String,
    siblings: Vec<Sibling>,
}

#[derive(Serialize)]
struct Sibling {
    value: String,
}

async fn kv(State(s): State<Arc<ApiState>>, req: axum::extract::Request) -> Response {
    // The request taken apart, not extracted piecewise: the `HeaderMap` and `Uri`
    // extractors clone (measurable on the read path).
    let (parts, body) = req.into_parts();
    let (method, uri, headers) = (parts.method, parts.uri, parts.headers);
    let op_name: &'static str = match method {
        Method::PUT => "put",
        Method::GET => "get",
        Method::DELETE => "delete",
        _ => {
            return ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on /kv/{{key}}: use GET, PUT or DELETE"),
            )
            .into_response()
        }
    };
    let started = Instant::now();
    let (outcome, response) = match kv_op(&s, &method, &uri, &headers, body).await {
        Ok((outcome, r)) => (outcome, r),
        Err(e) => (e.error, e.into_response()),
    };
    s.handle
        .metrics
        .request(op_name, outcome, started.elapsed());
    response
}

async fn kv_op(
    s: &ApiState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<(&'static str, Response), ApiError> {
    let key = parse_key(uri, &s.limits)?;
    let op = match *method {
        Method::PUT => {
            let w = parse_quorum(uri, "w", s.n)?;
            let context = parse_context(headers)?;
            let value = read_body(body, headers, &s.limits).await?;
            ClientOp::Put {
                key,
                value,
                context,
                w,
            }
        }
        Method::DELETE => {
            let w = parse_quorum(uri, "w", s.n)?;
            let context = parse_context(headers)?;
            ClientOp::Delete { key, context, w }
        }
        _ => {
            let r = parse_quorum(uri, "r", s.n)?;
            ClientOp::Get { key, r }
        }
    };
    if has_left(&s.handle.view()) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "left",
            "this node has left the cluster and no longer serves requests",
        ));
    }
    let rx = s.handle.submit(op)?;
    let result: ClientResult = match tokio::time::timeout(s.reply_timeout, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => return Err(SubmitError::Stopped.into()),
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the node did not answer in time",
            ))
        }
    };
    match result? {
        ClientReply::Written { context, .. } => {
            let mut r = StatusCode::NO_CONTENT.into_response();
            if let Some(v) = context_value(&context) {
                r.headers_mut().insert(CONTEXT_HEADER, v);
            }
            Ok(("ok", r))
        }
        ClientReply::Read {
            mut values,
            context,
            ..
        } => {
            let ctx = context_value(&context);
            let (outcome, mut r) = match values.len() {
                0 => (
                    "not_found",
                    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no value for this key")
                        .into_response(),
                ),
                1 => {
                    let (_, v) = values.remove(0);
                    (
                        "ok",
                        (
                            StatusCode::OK,
                            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
                            v,
                        )
                            .into_response(),
                    )
                }
                _ => {
                    let b64 = base64::engine::general_purpose::STANDARD;
                    let body = Siblings {
                        context: context.to_token(),
                        siblings: values
                            .iter()
                            .map(|(_, v)| Sibling {
                                value: b64.encode(v),
                            })
                            .collect(),
                    };
                    (
                        "siblings",
                        (StatusCode::MULTIPLE_CHOICES, axum::Json(body)).into_response(),
                    )
                }
            };
            if let Some(v) = ctx {
                r.headers_mut().insert(CONTEXT_HEADER, v);
            }
            Ok((outcome, r))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_kinds_filter_parses_and_rejects_garbage() {
        let k = |q: &str| parse_kinds(&format!("/events{q}").parse::<Uri>().unwrap());
        assert_eq!(k("").unwrap(), None);
        assert_eq!(k("?kinds=").unwrap(), None);
        assert_eq!(k("?x=1").unwrap(), None);
        assert_eq!(
            k("?kinds=hint,,ownership-handoff").unwrap(),
            Some(vec!["hint".to_owned(), "ownership-handoff".to_owned()])
        );
        for bad in ["?kinds=Hint", "?kinds=a%20b", "?kinds=hint,x;y"] {
            assert_eq!(k(bad).unwrap_err().status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn events_peers_switch_parses_and_rejects_garbage() {
        let p = |q: &str| parse_peers(&format!("/events{q}").parse::<Uri>().unwrap());
        for off in ["", "?peers=0", "?peers=false", "?kinds=hint"] {
            assert_eq!(p(off).unwrap(), PeerLines::Off, "{off}");
        }
        for on in ["?peers=1", "?peers=true", "?peers", "?kinds=hint&peers=1"] {
            assert_eq!(p(on).unwrap(), PeerLines::With, "{on}");
        }
        assert_eq!(p("?peers=only").unwrap(), PeerLines::Only);
        for bad in ["?peers=yes", "?peers=2", "?peers=%31"] {
            assert_eq!(p(bad).unwrap_err().status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%20c").unwrap(), b"a/b c".to_vec());
        assert_eq!(percent_decode("%ff").unwrap(), vec![0xff]);
        assert!(percent_decode("%").is_none());
        assert!(percent_decode("%4").is_none());
        assert!(percent_decode("%zz").is_none());
        assert!(percent_decode("%é").is_none());
    }

    #[test]
    fn quorum_params() {
        let uri: Uri = "/kv/a?r=2&x=1".parse().unwrap();
        assert_eq!(parse_quorum(&uri, "r", 3).unwrap(), Some(2));
        assert_eq!(parse_quorum(&uri, "w", 3).unwrap(), None);
        for bad in ["/kv/a?r=0", "/kv/a?r=4", "/kv/a?r=x", "/kv/a?r="] {
            let uri: Uri = bad.parse().unwrap();
            let e = parse_quorum(&uri, "r", 3).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
