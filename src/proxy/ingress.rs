//! Ingress (base-URL mode): which provider and endpoint a request is for,
//! the bounded body read, and the one parse of the body into the
//! [`RequestModel`] that every later stage reads.
//!
//! Paths: routed (and sent upstream) in their normal form ([`path`]), which
//! is refused when there is none. `/{provider}/v1/...` picks a configured
//! provider by name; an unprefixed `/v1/messages…` (or any unprefixed
//! `/v1/...` carrying `anthropic-version`) goes to the default Anthropic
//! provider, any other unprefixed `/v1/...` to the default
//! OpenAI-compatible one. A provider's endpoint in the other dialect
//! (Anthropic's OpenAI-compatible chat completions) is refused: it is
//! billed, and tollgate meters each provider in its own dialect only.

pub mod head;
pub mod held;
pub mod path;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::proxy::Session;

use super::error::ProxyError;
use crate::config::{Config, Provider};
use crate::dialect::{openai, request, Dialect};

/// The endpoint a request is for; only the metered ones get a parsed body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// Anthropic `POST /v1/messages/count_tokens` (free; parsed, not billed).
    CountTokens,
    /// OpenAI `POST /v1/chat/completions`.
    ChatCompletions,
    /// OpenAI `POST /v1/embeddings` (input tokens only).
    Embeddings,
    /// OpenAI `POST /v1/responses` (the Responses API).
    Responses,
    /// Anything else of the provider's API: forwarded as is, unmetered.
    Passthrough,
}

impl Endpoint {
    /// Billed by the provider and metered by tollgate.
    pub fn is_metered(self) -> bool {
        matches!(
            self,
            Endpoint::Messages
                | Endpoint::ChatCompletions
                | Endpoint::Embeddings
                | Endpoint::Responses
        )
    }

    /// Has an output bound (`max_tokens`) that budgets reserve for.
    pub fn has_output(self) -> bool {
        matches!(
            self,
            Endpoint::Messages | Endpoint::ChatCompletions | Endpoint::Responses
        )
    }
}

/// Where a request goes.
#[derive(Clone, Debug)]
pub struct Route {
    pub provider: Arc<Provider>,
    pub endpoint: Endpoint,
    /// Path and query to send upstream (the provider's base path included).
    pub upstream_path: String,
}

impl Route {
    pub fn dialect(&self) -> Dialect {
        self.provider.dialect
    }

    /// A call to a provider's batch API (Anthropic Message Batches, OpenAI
    /// Batch), whatever the base path before it.
    pub fn is_batch(&self) -> bool {
        let path = self
            .upstream_path
            .split_once('?')
            .map_or(self.upstream_path.as_str(), |(p, _)| p);
        // A byte scan: `match_indices` builds a substring searcher per
        // pattern, on every request, for paths of a few dozen bytes.
        let path = path.as_bytes();
        [&b"/v1/messages/batches"[..], b"/v1/batches"]
            .iter()
            .any(|b| {
                path.windows(b.len())
                    .enumerate()
                    .any(|(i, w)| w == *b && matches!(path.get(i + b.len()), None | Some(b'/')))
            })
    }
}

/// The providers by name, shared by every request.
pub struct Routes {
    providers: Vec<Arc<Provider>>,
    /// HTTPS_PROXY mode: intercepted host → its provider.
    by_host: Vec<(String, Arc<Provider>)>,
    default_anthropic: Option<Arc<Provider>>,
    default_openai: Option<Arc<Provider>>,
}

impl Routes {
    pub fn new(config: &Config) -> Routes {
        let providers: Vec<Arc<Provider>> =
            config.providers.iter().cloned().map(Arc::new).collect();
        let default_for = |d: Dialect| {
            let name = config.default_provider(d).map(|p| p.name.clone());
            providers
                .iter()
                .find(|p| Some(&p.name) == name.as_ref())
                .cloned()
        };
        let by_host = providers
            .iter()
            .flat_map(|p| p.hosts.iter().map(move |h| (h.clone(), p.clone())))
            .collect();
        Routes {
            default_anthropic: default_for(Dialect::Anthropic),
            default_openai: default_for(Dialect::OpenAi),
            providers,
            by_host,
        }
    }

    /// The default provider of `dialect` (what its unprefixed paths reach).
    pub fn default_provider(&self, dialect: Dialect) -> Option<&Arc<Provider>> {
        match dialect {
            Dialect::Anthropic => self.default_anthropic.as_ref(),
            Dialect::OpenAi => self.default_openai.as_ref(),
        }
    }

    /// The configured provider named `name`.
    pub fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// The route of a routed attempt at `provider`: its generation endpoint
    /// (Messages or Chat Completions, by its dialect). `query`: the client's
    /// query string, kept only for a provider of the client's own dialect
    /// (Anthropic's `?beta=true` means nothing to an OpenAI upstream).
    pub fn target_route(provider: &Arc<Provider>, query: Option<&str>) -> Route {
        let (endpoint, rest) = match provider.dialect {
            Dialect::Anthropic => (Endpoint::Messages, "/v1/messages"),
            Dialect::OpenAi => (Endpoint::ChatCompletions, "/v1/chat/completions"),
        };
        Route {
            provider: provider.clone(),
            endpoint,
            upstream_path: upstream_path(&provider.upstream.base_path, rest, query),
        }
    }

    /// The route of a call tollgate itself makes to `provider`'s API at
    /// `rest` (`/v1/messages/batches/{id}`: polling and settling batches).
    pub fn api_route(provider: &Arc<Provider>, rest: &str) -> Route {
        Route {
            provider: provider.clone(),
            endpoint: Endpoint::Passthrough,
            upstream_path: upstream_path(&provider.upstream.base_path, rest, None),
        }
    }

    /// Resolves the route of a request, or `UnknownRoute`. `tunnel`: the
    /// request came through an intercepted HTTPS_PROXY tunnel to this host,
    /// which names the provider (a request naming another host is refused).
    pub fn resolve(&self, req: &RequestHeader, tunnel: Option<&str>) -> Result<Route, ProxyError> {
        let raw = req.uri.path();
        let path = path::normalise(raw).map_err(|reason| ProxyError::BadPath {
            path: raw.to_string(),
            reason,
        })?;
        let path: &str = &path;
        let unknown = || ProxyError::UnknownRoute {
            method: req.method.to_string(),
            path: raw.to_string(),
            dialect: guess_dialect(req),
        };
        let by_host = match tunnel {
            Some(host) => Some(self.intercepted(req, path, host)?.ok_or_else(unknown)?),
            None => None,
        };
        let (provider, rest) = match by_host.or_else(|| self.prefixed(path)) {
            Some(found) => found,
            // Unprefixed: the providers' own `/v1/...` API only.
            None if path.starts_with("/v1/") => {
                let anthropic = path.starts_with("/v1/messages")
                    || path == "/v1/complete"
                    || req.headers.contains_key(crate::dialect::anthropic::VERSION);
                let provider = if anthropic {
                    self.default_anthropic.as_ref()
                } else {
                    self.default_openai.as_ref()
                };
                (provider.ok_or_else(unknown)?.clone(), path)
            }
            None => return Err(unknown()),
        };
        let post = req.method == http::Method::POST;
        // Relative to the API root: "/v1/messages" for "/anthropic/v1/messages".
        let endpoint = match (provider.dialect, post, rest) {
            (Dialect::Anthropic, true, "/v1/messages") => Endpoint::Messages,
            (Dialect::Anthropic, true, "/v1/messages/count_tokens") => Endpoint::CountTokens,
            (Dialect::OpenAi, true, "/v1/chat/completions" | "/chat/completions") => {
                Endpoint::ChatCompletions
            }
            (Dialect::OpenAi, true, "/v1/embeddings" | "/embeddings") => Endpoint::Embeddings,
            (Dialect::OpenAi, true, "/v1/responses" | "/responses") => Endpoint::Responses,
            (Dialect::Anthropic, _, "/v1/chat/completions" | "/chat/completions") => {
                return Err(ProxyError::UnsupportedEndpoint {
                    provider: provider.name.clone(),
                    path: rest.to_string(),
                    hint: "send Messages API calls (/v1/messages) to it, or chat completions \
                           to an OpenAI-compatible provider",
                    dialect: Dialect::OpenAi,
                });
            }
            _ => Endpoint::Passthrough,
        };
        let upstream_path = upstream_path(&provider.upstream.base_path, rest, req.uri.query());
        Ok(Route {
            provider,
            endpoint,
            upstream_path,
        })
    }

    /// A request that arrived through an intercepted HTTPS_PROXY tunnel to
    /// `tunnel`: that host names the provider, and the path is the
    /// provider's own (its base path, when present, is taken off). The
    /// request's own host (`:authority` or `Host`), when it has one, must be
    /// the tunnel's: the client verified a certificate for that name only.
    fn intercepted<'p>(
        &self,
        req: &RequestHeader,
        path: &'p str,
        tunnel: &str,
    ) -> Result<Option<(Arc<Provider>, &'p str)>, ProxyError> {
        let authority = req
            .uri
            .host()
            .or_else(|| req.headers.get(http::header::HOST)?.to_str().ok());
        if let Some(authority) = authority {
            let host = authority_host(authority);
            if !host.eq_ignore_ascii_case(tunnel) {
                return Err(ProxyError::Misdirected {
                    authority: host.to_string(),
                    tunnel: tunnel.to_string(),
                    dialect: guess_dialect(req),
                });
            }
        }
        let Some((_, provider)) = self
            .by_host
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(tunnel))
        else {
            return Ok(None);
        };
        let base = provider.upstream.base_path.as_str();
        let rest = match path.strip_prefix(base) {
            Some(r) if !base.is_empty() && (r.is_empty() || r.starts_with('/')) => r,
            _ => path,
        };
        Ok(Some((provider.clone(), rest)))
    }

    /// `/{name}/rest` for a configured provider name.
    fn prefixed<'p>(&self, path: &'p str) -> Option<(Arc<Provider>, &'p str)> {
        let trimmed = path.strip_prefix('/')?;
        let (first, _) = trimmed.split_once('/')?;
        let provider = self.providers.iter().find(|p| p.name == first)?;
        Some((provider.clone(), &path[1 + first.len()..]))
    }
}

/// The host of an authority (`host`, `host:port`, `[v6]:port`), without
/// the brackets or a trailing dot, as tunnels name their host.
fn authority_host(authority: &str) -> &str {
    let authority = authority.trim();
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(h, _)| h)
    } else {
        match authority.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => authority,
        }
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// Where the client reaches tollgate, for the `results_url` of the batch
/// objects in an Anthropic Message Batches answer (see
/// [`crate::dialect::anthropic::batch`]): `scheme://<the client's
/// authority><the client's path prefix>`, or `None` when the request is not
/// one whose answer holds batch objects.
///
/// `intercepted`: the request came through an HTTPS_PROXY tunnel, so the
/// client spoke TLS to the provider's own name and will fetch the URL
/// through the proxy again (`https`); base-URL mode listens in plain HTTP.
/// The authority is the one the client sent (`:authority`, else `Host`), so
/// a client behind a port mapping gets the address it used; `local` (the
/// listener's address) when it sent none that can go in a URL.
pub fn batch_results_base(
    req: &RequestHeader,
    route: &Route,
    intercepted: bool,
    local: Option<std::net::SocketAddr>,
) -> Option<String> {
    if route.dialect() != Dialect::Anthropic || route.endpoint != Endpoint::Passthrough {
        return None;
    }
    let normal = path::normalise(req.uri.path()).ok()?;
    let prefix = crate::dialect::anthropic::batch::object_path_prefix(&normal)?;
    let sent = req
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers.get(http::header::HOST)?.to_str().ok())
        .map(str::trim)
        .filter(|a| url_authority(a));
    let authority = match sent {
        Some(a) => a.to_string(),
        None => local?.to_string(),
    };
    let scheme = if intercepted { "https" } else { "http" };
    Some(format!("{scheme}://{authority}{prefix}"))
}

/// Whether a `Host` value can go into a URL as is: a host name, an IPv4 or
/// a bracketed IPv6 address, with an optional port; no user info, path or
/// anything else a client could slip in.
fn url_authority(a: &str) -> bool {
    !a.is_empty()
        && a.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
}

/// The dialect a request most likely speaks, for errors before routing.
pub fn guess_dialect(req: &RequestHeader) -> Dialect {
    if req.headers.contains_key(crate::dialect::anthropic::VERSION)
        || req
            .headers
            .contains_key(crate::dialect::anthropic::X_API_KEY)
        || req.uri.path().contains("/messages")
        // The gateway surface speaks Anthropic Messages.
        || req.uri.path().starts_with("/api/v1/llm/")
    {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    }
}

/// base path + request path, minus the `/v1` an OpenAI-style base already has.
fn upstream_path(base_path: &str, rest: &str, query: Option<&str>) -> String {
    let rest = match rest.strip_prefix("/v1") {
        Some(tail) if base_path.ends_with("/v1") && (tail.is_empty() || tail.starts_with('/')) => {
            tail
        }
        _ => rest,
    };
    let mut out =
        String::with_capacity(base_path.len() + rest.len() + 1 + query.map_or(0, str::len));
    out.push_str(base_path);
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Reads the whole request body, refusing more than `limit` bytes or
/// taking longer than `timeout` (pingora only bounds each read, so a body
/// that trickles in would never end).
pub async fn read_body(
    session: &mut Session,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ProxyError> {
    // pingora's timer: nothing to build or register when the body came
    // with the head (a tokio timer is set up per call).
    pingora::time::fast_timeout::fast_timeout(timeout, read_body_untimed(session, limit))
        .await
        .unwrap_or(Err(ProxyError::ClientTimeout {
            what: "the request body",
            limit: timeout,
        }))
}

async fn read_body_untimed(session: &mut Session, limit: usize) -> Result<Bytes, ProxyError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ProxyError::TooLarge { limit });
    }
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    loop {
        let chunk = session.read_request_body().await.map_err(|e| {
            // pingora's names for broken chunked framing (its constants
            // are private): the client is there, its request is malformed.
            match e.etype.as_str() {
                "InvalidChunk" | "InvalidTrailerEnd" => ProxyError::MalformedRequest {
                    status: 400,
                    detail: e.to_string(),
                },
                _ => ProxyError::ClientRead(e.to_string()),
            }
        })?;
        let Some(chunk) = chunk else { break };
        let total = first.as_ref().map_or(0, Bytes::len) + buf.len() + chunk.len();
        if total > limit {
            return Err(ProxyError::TooLarge { limit });
        }
        // Most bodies arrive in one chunk: keep it without copying.
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            None => buf.extend_from_slice(&chunk),
            Some(prev) => {
                buf.reserve(declared.map_or(prev.len() + chunk.len(), |n| n as usize));
                buf.extend_from_slice(&prev);
                buf.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

/// The parsed request: what later stages need, plus the body to send.
#[derive(Clone, Debug)]
pub struct RequestModel {
    /// The body to forward (rewritten only to add `stream_options.include_usage`).
    pub body: Bytes,
    /// The requested model; empty for passthrough requests.
    pub model: String,
    /// `"stream": true` in the body (SDKs send `Accept: application/json` even for streams).
    pub stream: bool,
    /// `max_tokens` (or OpenAI `max_completion_tokens`), when given.
    pub max_tokens: Option<u64>,
    /// OpenAI stream whose usage chunk tollgate asked for although the client
    /// did not: the meter removes it from what the client receives.
    pub strip_usage_chunk: bool,
    /// Which field carried `max_tokens` (`max_completion_tokens` for newer
    /// OpenAI clients), if any.
    pub max_tokens_field: Option<&'static str>,
    /// Responses API: the answer depends on the body alone (cacheable).
    pub stateless: bool,
    /// Both `max_tokens` and `max_completion_tokens` were sent.
    pub both_bounds: bool,
    /// OpenAI `n` (at least 1): choices generated, each up to the bound.
    pub choices: u64,
}

impl RequestModel {
    /// Sets the output bound to `n` in the body: in the field the client
    /// used, else `max_tokens` (`max_completion_tokens` for OpenAI itself,
    /// whose reasoning models refuse `max_tokens`). Re-serialises the body:
    /// only budgets that clamp or must bound an open request get here.
    pub fn set_max_tokens(
        &mut self,
        n: u64,
        provider: &str,
        dialect: Dialect,
    ) -> Result<(), ProxyError> {
        let field = self
            .max_tokens_field
            .unwrap_or_else(|| dialect.default_bound_field(provider));
        self.body = request::set_output_bound(&self.body, n, field, self.both_bounds)
            .map_err(bad_request)?;
        self.max_tokens = Some(n);
        self.max_tokens_field = Some(field);
        Ok(())
    }
}

/// Parses the body of a metered endpoint (one parse; the rest of the body is
/// validated but not materialised).
pub fn parse(route: &Route, body: Bytes) -> Result<RequestModel, ProxyError> {
    if route.endpoint == Endpoint::Passthrough {
        return Ok(RequestModel {
            body,
            model: String::new(),
            stream: false,
            max_tokens: None,
            strip_usage_chunk: false,
            max_tokens_field: None,
            both_bounds: false,
            choices: 1,
            stateless: false,
        });
    }
    let head = request::parse_head(&body).map_err(bad_request)?;
    let mut model_out = RequestModel {
        body,
        model: head.model,
        stream: head.stream,
        max_tokens: head.max_tokens,
        strip_usage_chunk: false,
        // A bound added to a Responses request goes in its own field.
        stateless: head.stateless,
        max_tokens_field: match route.endpoint {
            Endpoint::Responses => Some("max_output_tokens"),
            _ => head.max_tokens_field,
        },
        both_bounds: head.both_bounds,
        choices: head.choices,
    };
    if route.endpoint == Endpoint::ChatCompletions && head.stream && !head.wants_usage {
        model_out.body =
            openai::request::with_include_usage(&model_out.body, head.had_stream_options)
                .map_err(bad_request)?;
        model_out.strip_usage_chunk = true;
    }
    Ok(model_out)
}

/// A body the dialect layer could not read or rewrite.
fn bad_request(e: request::RequestError) -> ProxyError {
    match e {
        request::RequestError::BadJson(m) => ProxyError::BadJson(m),
        request::RequestError::Encode(m) => ProxyError::Internal(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        let config = crate::config::parse_str(
            "[providers.openrouter]\nhosts = [\"openrouter.ai\"]\n",
            &Default::default(),
            &Default::default(),
        )
        .expect("config");
        Routes::new(&config)
    }

    fn request(method: &str, uri: &str, host: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build(method, uri.as_bytes(), None).expect("request");
        if let Some(h) = host {
            req.insert_header("host", h).expect("host");
        }
        req
    }

    #[test]
    fn batch_paths_are_known_by_their_tail() {
        let r = routes();
        let batch = |uri: &str| {
            r.resolve(&request("POST", uri, None), None)
                .expect("route")
                .is_batch()
        };
        assert!(batch("/v1/messages/batches"));
        assert!(batch("/v1/messages/batches/msgbatch_1/results?x=1"));
        assert!(batch("/openai/v1/batches"));
        assert!(!batch("/v1/messages"));
        assert!(!batch("/v1/messages/batchesque"));
        assert!(!batch("/v1/chat/completions"));
    }

    #[test]
    fn batch_answers_point_back_at_the_listener_and_prefix_the_client_used() {
        let r = routes();
        let local: std::net::SocketAddr = ([127, 0, 0, 1], 4000).into();
        let base = |method: &str, uri: &str, host: Option<&str>, tunnel: Option<&str>| {
            let req = request(method, uri, host);
            let route = r.resolve(&req, tunnel).expect("route");
            batch_results_base(&req, &route, tunnel.is_some(), Some(local))
        };
        let h = Some("localhost:8080");
        assert_eq!(
            base("POST", "/v1/messages/batches", h, None).as_deref(),
            Some("http://localhost:8080")
        );
        assert_eq!(
            base("GET", "/anthropic/v1/messages/batches/b1?x=1", h, None).as_deref(),
            Some("http://localhost:8080/anthropic")
        );
        assert_eq!(
            base(
                "POST",
                "/anthropic//v1/messages/batches/b1/cancel/",
                h,
                None
            )
            .as_deref(),
            Some("http://localhost:8080/anthropic"),
            "the normal form's prefix"
        );
        // No usable Host: the listener's own address.
        for host in [None, Some("a@b"), Some("x/y"), Some("")] {
            assert_eq!(
                base("GET", "/v1/messages/batches", host, None).as_deref(),
                Some("http://127.0.0.1:4000"),
                "{host:?}"
            );
        }
        // Through an HTTPS_PROXY tunnel: https to the provider's own name.
        assert_eq!(
            base(
                "GET",
                "/v1/messages/batches/b1",
                Some("api.anthropic.com"),
                Some("api.anthropic.com")
            )
            .as_deref(),
            Some("https://api.anthropic.com")
        );
        // Not batch objects: results (a stream), other endpoints, OpenAI batches.
        for (m, uri) in [
            ("GET", "/v1/messages/batches/b1/results"),
            ("POST", "/v1/messages"),
            ("GET", "/v1/models"),
            ("GET", "/openai/v1/batches/b1"),
        ] {
            assert_eq!(base(m, uri, h, None), None, "{uri}");
        }
    }

    #[test]
    fn a_tunnels_host_names_the_provider() {
        let r = routes();
        let req = request("POST", "/v1/messages", Some("API.anthropic.com:443"));
        let route = r.resolve(&req, Some("api.anthropic.com")).expect("route");
        assert_eq!(route.provider.name, "anthropic");
        assert_eq!(route.endpoint, Endpoint::Messages);
        // No host at all (HTTP/1.0): the tunnel decides.
        let req = request("POST", "/v1/chat/completions", None);
        let route = r.resolve(&req, Some("api.openai.com")).expect("route");
        assert_eq!(route.provider.name, "openai");
        assert_eq!(route.endpoint, Endpoint::ChatCompletions);
        // OpenRouter's base path is the API's own: taken off, then put back.
        let req = request("POST", "/api/v1/chat/completions", Some("openrouter.ai"));
        let route = r.resolve(&req, Some("openrouter.ai")).expect("route");
        assert_eq!(route.provider.name, "openrouter");
        assert_eq!(route.endpoint, Endpoint::ChatCompletions);
        assert_eq!(route.upstream_path, "/api/v1/chat/completions");
    }

    #[test]
    fn a_request_naming_another_host_than_its_tunnel_is_misdirected() {
        let r = routes();
        let req = request("POST", "/v1/chat/completions", Some("api.openai.com"));
        match r.resolve(&req, Some("api.anthropic.com")) {
            Err(e @ ProxyError::Misdirected { .. }) => assert_eq!(e.status(), 421),
            other => panic!(
                "expected misdirected, got {:?}",
                other.map(|r| r.upstream_path)
            ),
        }
        // Outside a tunnel the host does not route: the path does.
        let route = r.resolve(&req, None).expect("route");
        assert_eq!(route.provider.name, "openai");
        // The same host spelled with a trailing dot is the same host.
        let req = request("POST", "/v1/messages", Some("api.anthropic.com.:443"));
        assert!(r.resolve(&req, Some("api.anthropic.com")).is_ok());
        assert_eq!(authority_host("[::1]:443"), "::1");
        assert_eq!(authority_host("[::1]"), "::1");
        assert_eq!(authority_host("Example.com."), "Example.com");
    }

    #[test]
    fn upstream_paths() {
        assert_eq!(
            upstream_path("", "/v1/messages", Some("beta=true")),
            "/v1/messages?beta=true"
        );
        assert_eq!(
            upstream_path("/v1", "/v1/chat/completions", None),
            "/v1/chat/completions"
        );
        assert_eq!(
            upstream_path("/api/v1", "/v1/chat/completions", None),
            "/api/v1/chat/completions"
        );
        assert_eq!(
            upstream_path("/api/v1", "/chat/completions", None),
            "/api/v1/chat/completions"
        );
        assert_eq!(upstream_path("/v1", "/v1/models", None), "/v1/models");
        assert_eq!(upstream_path("/v1", "/v1beta/x", None), "/v1/v1beta/x");
    }
}
