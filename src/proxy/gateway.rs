//! The gateway surface on the base-URL listener: tollgate's own API paths,
//! mapped onto the same stages as the providers' paths (no second pipeline).
//!
//! - `POST /api/v1/llm/chat`, `POST /api/v1/llm/chat/stream`: an Anthropic
//!   Messages body, served exactly as `POST /v1/messages` to the default
//!   Anthropic provider (identify, idempotency, limits, cache, budget,
//!   routing, forward, meter, receipts). The path decides streaming: `/chat`
//!   answers one JSON message, `/chat/stream` SSE; a body whose `stream`
//!   says otherwise is a 400 rather than silently overridden (a client that
//!   asked for a stream and got JSON would break in a worse place). A model
//!   that is a routing alias (or `auto`) is routed like on `/v1/messages`,
//!   OpenAI-dialect targets included. `anthropic-version` defaults to
//!   [`API_VERSION`] and the body goes upstream as `application/json`, so a
//!   plain `curl -d` works.
//! - `GET /api/v1/llm/usage`: the local ledger's rollups for the caller's
//!   account only (the identify stage's account: the gateway key's when
//!   keys are configured, else `x-tollgate-account` or the default). Not a
//!   provider call: it records no usage event.
//!
//! - `POST /api/v1/llm/batch`, `GET /api/v1/llm/batch/{id}`: a batch
//!   submitted through the Message Batches pipeline, answered as tollgate's
//!   record of it ([`batch`]).
//!
//! Only base-URL mode serves these: inside an HTTPS_PROXY tunnel a path is
//! the provider host's own (OpenRouter's API lives under `/api/v1`).

use std::collections::BTreeMap;

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::proxy::Session;

use super::error::ProxyError;
use super::ingress::{self, Route, Routes};
use super::respond::send_whole;
use super::{headers, identify, State};
use crate::dialect::anthropic::{API_VERSION, VERSION};
use crate::dialect::request::{require_stream, StreamField};
use crate::dialect::Dialect;
use crate::meter::event::UsageEvent;
use crate::usage_report::{GroupBy, UsageReport};

pub mod batch;

pub use batch::{BATCH, BATCH_STATUS};

/// `POST`: one Anthropic message, as JSON.
pub const CHAT: &str = "/api/v1/llm/chat";
/// `POST`: one Anthropic message, as SSE.
pub const CHAT_STREAM: &str = "/api/v1/llm/chat/stream";
/// `GET`: the caller's account's usage rollups.
pub const USAGE: &str = "/api/v1/llm/usage";
/// Every path of the surface (the OpenAPI document, `src/proxy/openapi.json`,
/// describes exactly these).
pub const PATHS: &[&str] = &[CHAT, CHAT_STREAM, USAGE, BATCH, BATCH_STATUS];
/// The OpenAPI document of the surface.
pub const OPENAPI: &str = include_str!("openapi.json");
/// Grouping of a usage request that names none (as the control endpoint's).
const DEFAULT_GROUP_BY: &str = "account,model,day";

/// A gateway path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// `POST /api/v1/llm/chat`.
    Chat,
    /// `POST /api/v1/llm/chat/stream`.
    ChatStream,
    /// `GET /api/v1/llm/usage`.
    Usage,
    /// `POST /api/v1/llm/batch`.
    Batch,
    /// `GET /api/v1/llm/batch/{id}`.
    BatchStatus,
}

impl Surface {
    /// The gateway path `req` is for (in its normal form), if any.
    pub fn of(req: &RequestHeader) -> Option<Surface> {
        let path = ingress::path::normalise(req.uri.path()).ok()?;
        match &*path {
            CHAT => Some(Surface::Chat),
            CHAT_STREAM => Some(Surface::ChatStream),
            USAGE => Some(Surface::Usage),
            BATCH => Some(Surface::Batch),
            p if batch::status_id(p).is_some() => Some(Surface::BatchStatus),
            _ => None,
        }
    }

    fn method(self) -> http::Method {
        match self {
            Surface::Chat | Surface::ChatStream | Surface::Batch => http::Method::POST,
            Surface::Usage | Surface::BatchStatus => http::Method::GET,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Surface::Chat => CHAT,
            Surface::ChatStream => CHAT_STREAM,
            Surface::Usage => USAGE,
            Surface::Batch => BATCH,
            Surface::BatchStatus => BATCH_STATUS,
        }
    }

    /// 405 for another method than the path's.
    fn check_method(self, req: &RequestHeader) -> Result<(), ProxyError> {
        if req.method == self.method() {
            return Ok(());
        }
        Err(ProxyError::MethodNotAllowed(format!(
            "{} takes {}, not {}",
            self.path(),
            self.method(),
            req.method
        )))
    }
}

// === chat ===

/// The route of a chat call: the default Anthropic provider's
/// `/v1/messages` (the client's query string kept, as on `/v1/messages`).
/// Also fills in what a gateway client need not send (see the module doc).
pub fn chat_route(
    routes: &Routes,
    surface: Surface,
    req: &mut RequestHeader,
) -> Result<Route, ProxyError> {
    surface.check_method(req)?;
    let provider = default_anthropic(routes, req)?;
    provider_defaults(req)?;
    Ok(Routes::target_route(provider, req.uri.query()))
}

/// The provider every gateway path goes to: the default Anthropic one.
fn default_anthropic<'r>(
    routes: &'r Routes,
    req: &RequestHeader,
) -> Result<&'r std::sync::Arc<crate::config::Provider>, ProxyError> {
    routes
        .default_provider(Dialect::Anthropic)
        .ok_or_else(|| ProxyError::UnknownRoute {
            method: req.method.to_string(),
            path: req.uri.path().to_string(),
            dialect: Dialect::Anthropic,
        })
}

/// What a gateway client need not send: `anthropic-version` (the
/// client's own is kept) and a JSON content type (whatever `curl -d` says).
fn provider_defaults(req: &mut RequestHeader) -> Result<(), ProxyError> {
    let internal = |e: Box<pingora::Error>| ProxyError::Internal(e.to_string());
    if !req.headers.contains_key(VERSION) {
        req.insert_header(VERSION, API_VERSION).map_err(internal)?;
    }
    req.insert_header(http::header::CONTENT_TYPE, "application/json")
        .map_err(internal)?;
    Ok(())
}

/// The body of a chat call with its `stream` field made the path's (see
/// [`require_stream`]): before the idempotency stage, so a key's
/// fingerprint covers what is actually asked of the provider.
pub fn chat_body(surface: Surface, body: Bytes) -> Result<Bytes, ProxyError> {
    let streams = surface == Surface::ChatStream;
    require_stream(body, streams).map_err(|e| match e {
        StreamField::BadJson(m) => ProxyError::BadJson(m),
        StreamField::NotBoolean => ProxyError::InvalidRequest(e.to_string()),
        StreamField::Conflict { sent: true } => ProxyError::InvalidRequest(format!(
            "{CHAT} answers with one JSON message, and this body asks for \"stream\": true; \
             send it to {CHAT_STREAM}, or drop the field"
        )),
        StreamField::Conflict { sent: false } => ProxyError::InvalidRequest(format!(
            "{CHAT_STREAM} answers with server-sent events, and this body asks for \
             \"stream\": false; send it to {CHAT}, or drop the field"
        )),
    })
}

// === usage ===

/// What a usage request asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageQuery {
    pub group_by: GroupBy,
    /// The grouping as asked (validated), for the control endpoint.
    pub by: String,
    /// `account=`: must be the caller's own.
    pub account: Option<String>,
}

/// Parses `group_by=` (or `by=`, as the admin listener's `/usage`) and
/// `account=`; anything else is refused, as the control endpoint does.
pub fn parse_usage_query(query: Option<&str>) -> Result<UsageQuery, ProxyError> {
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode_component(k)?, decode_component(v)?);
        if !matches!(k.as_str(), "group_by" | "by" | "account") {
            return Err(ProxyError::InvalidRequest(format!(
                "unknown query parameter {k:?} (use group_by or by, and account)"
            )));
        }
        if params.insert(k.clone(), v).is_some() {
            return Err(ProxyError::InvalidRequest(format!(
                "query parameter {k:?} given twice"
            )));
        }
    }
    let by = match (params.get("group_by"), params.get("by")) {
        (Some(a), Some(b)) if a != b => {
            return Err(ProxyError::InvalidRequest(
                "group_by and by disagree; send one of them".into(),
            ))
        }
        (Some(a), _) | (None, Some(a)) => a.as_str(),
        (None, None) => DEFAULT_GROUP_BY,
    };
    let group_by = GroupBy::parse(by).map_err(|e| ProxyError::InvalidRequest(e.to_string()))?;
    Ok(UsageQuery {
        group_by,
        // Only dimension names and commas once parsed: safe in a URL as is.
        by: by
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .collect::<Vec<_>>()
            .join(","),
        account: params.remove("account"),
    })
}

/// A query component with `+` and `%XX` decoded.
fn decode_component(s: &str) -> Result<String, ProxyError> {
    let bad = || ProxyError::InvalidRequest(format!("a malformed query component: {s:?}"));
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// The rollup of `account`'s events among `events`, as JSON: the control
/// endpoint's shape (`group_by`, `rows`, `total`) plus the `account` it
/// covers and its `source` (this sidecar's local ledger).
pub fn usage_json(
    events: impl IntoIterator<Item = UsageEvent>,
    account: &str,
    by: &GroupBy,
) -> serde_json::Value {
    let mut report = UsageReport::new(by);
    for e in events.into_iter().filter(|e| e.account == account) {
        report.add(&e);
    }
    let mut json = report.to_json();
    if let Some(obj) = json.as_object_mut() {
        obj.insert("account".into(), account.into());
        obj.insert("source".into(), "sidecar".into());
    }
    json
}

/// Reads an account's usage from the control endpoint (with `control_url`).
pub struct ControlUsage {
    /// `{control_url}/api/v1/llm/usage`.
    url: String,
    /// `None`: the client could not be built (said when used).
    client: Option<reqwest::Client>,
}

/// How long a usage read from the control endpoint may take.
const CONTROL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl ControlUsage {
    /// For the control endpoint at `base` (no trailing `/`).
    pub fn new(base: &str) -> ControlUsage {
        let client = reqwest::Client::builder()
            .timeout(CONTROL_TIMEOUT)
            .build()
            .inspect_err(|e| tracing::warn!(error = %e, "no HTTP client for usage reads"))
            .ok();
        ControlUsage {
            url: format!("{base}{USAGE}"),
            client,
        }
    }

    /// The control endpoint's rollup for the account of `key` (a gateway
    /// key the control endpoint issued: it scopes the read to its account).
    async fn read(&self, key: &str, by: &str) -> Result<serde_json::Value, ProxyError> {
        let client = self.client.as_ref().ok_or_else(|| {
            ProxyError::Internal("no HTTP client for the control endpoint".into())
        })?;
        let unreachable = |e: reqwest::Error| ProxyError::UpstreamUnreachable {
            provider: "control".into(),
            // Without the URL: reqwest's message names it, never the key.
            detail: e.without_url().to_string(),
            sent: false,
        };
        let resp = client
            .get(format!("{}?group_by={by}", self.url))
            .bearer_auth(key)
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(unreachable)?;
        let body: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ProxyError::Control {
                status: 502,
                message: format!("not JSON ({status}): {e}"),
            })?;
        if status == 200 {
            return Ok(body);
        }
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("no message")
            .to_string();
        Err(ProxyError::Control {
            // Its refusals are the caller's; its failures are a bad gateway.
            status: match status {
                400 | 401 | 403 => status,
                _ => 502,
            },
            message,
        })
    }
}

/// Answers `GET /api/v1/llm/usage`: refusals in the Anthropic error shape,
/// like every answer of the surface. Records no usage event.
pub async fn serve_usage(state: &State, session: &mut Session) {
    ignore_body(session);
    let result = usage(state, session.req_header()).await;
    send_json(session, result).await;
}

/// A read takes no body: one sent is not read, and what follows on the
/// connection is not a next request.
fn ignore_body(session: &mut Session) {
    let h = &session.req_header().headers;
    if h.contains_key(http::header::TRANSFER_ENCODING)
        || h.get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
    {
        super::respond::give_up_on_client(session);
    }
}

/// Answers a read of the surface's own (not a provider call): the JSON, or
/// the refusal in the Anthropic error shape, with a request id.
async fn send_json(session: &mut Session, result: Result<serde_json::Value, ProxyError>) {
    let request_id = uuid::Uuid::now_v7().to_string();
    let json = match result {
        Ok(json) => json,
        Err(err) => {
            let path = session.req_header().uri.path();
            tracing::debug!(request_id = %request_id, path, error = %err, "gateway read refused");
            let (header, body) = err.response(Dialect::Anthropic, &request_id);
            send_whole(session, header, body).await;
            return;
        }
    };
    let body = Bytes::from(json.to_string());
    let mut header = headers::response_header(http::StatusCode::OK, 4);
    let _ = header.insert_header(http::header::CONTENT_TYPE, "application/json");
    let _ = header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
    let _ = header.insert_header(headers::REQUEST_ID, request_id);
    send_whole(session, header, body).await;
}

async fn usage(state: &State, req: &RequestHeader) -> Result<serde_json::Value, ProxyError> {
    Surface::Usage.check_method(req)?;
    let identity = identify::identify(req, &state.default_identity, &state.fleet.keyring())
        .inspect_err(|e| super::count_key_rejection(state, e))?;
    let q = parse_usage_query(req.uri.query())?;
    if let Some(asked) = q.account.as_deref().filter(|a| *a != identity.account) {
        return Err(ProxyError::Forbidden(format!(
            "this caller is account {:?} and cannot read account {asked:?}",
            identity.account
        )));
    }
    if let Some(control) = &state.control_usage {
        // The outbox keeps only what is not shipped yet: the account's
        // ledger is the control endpoint's, read with the caller's own
        // gateway key (a sidecar credential may not read usage).
        let keyed = state.fleet.keyring().enabled();
        let Some(key) = identify::presented_key(req).filter(|_| keyed) else {
            return Err(ProxyError::Forbidden(format!(
                "this sidecar ships its usage to the control endpoint, which answers an \
                 account's usage to that account's gateway key only; this sidecar has no \
                 gateway keys (ask the control endpoint: GET {USAGE})"
            )));
        };
        let mut json = control.read(key, &q.by).await?;
        if let Some(obj) = json.as_object_mut() {
            obj.insert("account".into(), identity.account.clone().into());
            obj.insert("source".into(), "control".into());
        }
        return Ok(json);
    }
    let outbox = state.recorder.outbox().clone();
    // Reading the whole ledger is disk work: keep it off the async threads.
    tokio::task::spawn_blocking(move || {
        let mut events = Vec::new();
        outbox
            .for_each_event(&mut |e| {
                if e.account == identity.account {
                    events.push(e);
                }
            })
            .map(|()| usage_json(events, &identity.account, &q.group_by))
    })
    .await
    .map_err(|e| ProxyError::Internal(format!("reading the ledger: {e}")))?
    .map_err(|e| ProxyError::Internal(format!("reading the ledger: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::meter::event::CacheOutcome;
    use crate::usage_report::Dim;

    fn req(method: &str, uri: &str) -> RequestHeader {
        RequestHeader::build(method, uri.as_bytes(), None).unwrap()
    }

    #[test]
    fn paths_are_known_in_their_normal_form_only() {
        assert_eq!(
            Surface::of(&req("POST", "/api/v1/llm/chat")),
            Some(Surface::Chat)
        );
        assert_eq!(
            Surface::of(&req("POST", "//api/v1/llm/./chat/stream/")),
            Some(Surface::ChatStream)
        );
        assert_eq!(
            Surface::of(&req("GET", "/api/v1/llm/usage?group_by=model")),
            Some(Surface::Usage)
        );
        assert_eq!(
            Surface::of(&req("POST", "/api/v1/llm/batch")),
            Some(Surface::Batch)
        );
        assert_eq!(
            Surface::of(&req("GET", "/api/v1/llm/batch/msgbatch_1?x=1")),
            Some(Surface::BatchStatus)
        );
        for other in [
            "/api/v1/llm/batch/a/b",
            "/api/v1/llm/batches",
            "/api/v1/llm/chatx",
            "/v1/messages",
            "/api/v1/chat/completions",
        ] {
            assert_eq!(Surface::of(&req("POST", other)), None, "{other}");
        }
        assert!(Surface::Chat.check_method(&req("GET", CHAT)).is_err());
        assert!(Surface::Usage.check_method(&req("POST", USAGE)).is_err());
        assert!(Surface::Usage.check_method(&req("GET", USAGE)).is_ok());
    }

    fn routes() -> Routes {
        let config =
            crate::config::parse_str("", &Default::default(), &Default::default()).unwrap();
        Routes::new(&config)
    }

    #[test]
    fn chat_goes_to_the_default_anthropic_messages_endpoint() {
        let r = routes();
        let mut h = req("POST", "/api/v1/llm/chat?beta=true");
        h.insert_header("content-type", "application/x-www-form-urlencoded")
            .unwrap();
        let route = chat_route(&r, Surface::Chat, &mut h).unwrap();
        assert_eq!(route.provider.name, "anthropic");
        assert_eq!(route.endpoint, ingress::Endpoint::Messages);
        assert_eq!(route.upstream_path, "/v1/messages?beta=true");
        assert_eq!(h.headers.get(VERSION).unwrap(), API_VERSION);
        assert_eq!(
            h.headers.get("content-type").unwrap(),
            "application/json",
            "the body is JSON whatever curl -d says"
        );
        // The client's own version is kept.
        let mut h = req("POST", "/api/v1/llm/chat/stream");
        h.insert_header(VERSION, "2024-01-01").unwrap();
        chat_route(&r, Surface::ChatStream, &mut h).unwrap();
        assert_eq!(h.headers.get(VERSION).unwrap(), "2024-01-01");
        let mut h = req("GET", "/api/v1/llm/chat");
        assert!(matches!(
            chat_route(&r, Surface::Chat, &mut h),
            Err(ProxyError::MethodNotAllowed(_))
        ));
    }

    #[test]
    fn chat_bodies_follow_the_path() {
        let body = Bytes::from_static(br#"{"model":"m","max_tokens":5,"messages":[]}"#);
        assert_eq!(chat_body(Surface::Chat, body.clone()).unwrap(), body);
        let streamed = chat_body(Surface::ChatStream, body).unwrap();
        assert!(
            crate::dialect::request::parse_head(&streamed)
                .unwrap()
                .stream
        );
        let err = chat_body(Surface::Chat, Bytes::from_static(br#"{"stream":true}"#));
        match err {
            Err(e @ ProxyError::InvalidRequest(_)) => {
                assert_eq!(e.status(), 400);
                assert!(e.to_string().contains(CHAT_STREAM), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            chat_body(Surface::ChatStream, Bytes::from_static(b"{")),
            Err(ProxyError::BadJson(_))
        ));
    }

    #[test]
    fn usage_queries() {
        let q = parse_usage_query(None).unwrap();
        assert_eq!(q.group_by, GroupBy::parse(DEFAULT_GROUP_BY).unwrap());
        let q = parse_usage_query(Some("group_by=account%2C+model,day")).unwrap();
        assert_eq!(q.group_by.0, vec![Dim::Account, Dim::Model, Dim::Day]);
        assert_eq!(q.by, "account,model,day");
        let q = parse_usage_query(Some("by=tag&account=acme")).unwrap();
        assert_eq!(
            (q.group_by.0, q.account.as_deref()),
            (vec![Dim::Tag], Some("acme"))
        );
        assert!(parse_usage_query(Some("by=model&group_by=model")).is_ok());
        for bad in [
            "group_by=nope",
            "by=model&group_by=day",
            "limit=3",
            "by=model&by=day",
            "by=%zz",
            "by=%e2%28",
        ] {
            assert!(
                matches!(
                    parse_usage_query(Some(bad)),
                    Err(ProxyError::InvalidRequest(_))
                ),
                "{bad}"
            );
        }
    }

    fn event(account: &str, model: &str, cost: u64) -> UsageEvent {
        UsageEvent {
            event_id: format!("{account}-{model}-{cost}"),
            ts: 1_795_000_000_000_000,
            sidecar_id: "s".into(),
            account: account.into(),
            tags: vec![("team".into(), "search".into())],
            provider: "anthropic".into(),
            model: model.into(),
            cache: CacheOutcome::Miss,
            usage: crate::dialect::Usage {
                input_tokens: 10,
                output_tokens: 2,
                ..Default::default()
            },
            cost_nusd: cost,
            http_status: 200,
            priced: true,
            ..UsageEvent::default()
        }
    }

    #[test]
    fn usage_covers_the_callers_account_only() {
        let events = vec![
            event("a", "m1", 100),
            event("b", "m1", 7_000),
            event("a", "m2", 5),
            event("a", "m1", 1),
        ];
        let by = GroupBy::parse("account,model").unwrap();
        let json = usage_json(events.clone(), "a", &by);
        assert_eq!(json["account"], "a");
        assert_eq!(json["source"], "sidecar");
        let rows = json["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "{json}");
        assert!(rows.iter().all(|r| r["account"] == "a"));
        assert_eq!(rows[0]["model"], "m1");
        assert_eq!(rows[0]["requests"], 2);
        assert_eq!(rows[0]["cost_nusd"], 101);
        assert_eq!(json["total"]["cost_nusd"], 106);
        assert_eq!(json["total"]["requests"], 3);
        let json = usage_json(events, "nobody", &by);
        assert_eq!(json["rows"].as_array().unwrap().len(), 0);
        assert_eq!(json["total"]["requests"], 0);
    }
}
