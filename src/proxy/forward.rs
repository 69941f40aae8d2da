//! Forward: build the upstream request (client credentials and `x-tollgate-*`
//! stripped, the provider key injected), take a connection through
//! pingora's pooled connector (rustls, h2 or HTTP/1.1) before the request's
//! open usage record commits, then send the head and body (over HTTP/1.1
//! in one write) and wait for the response header within the first-byte
//! timeout.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pingora::connectors::http::{v1, v2};
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client as h1;
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;

use super::error::ProxyError;
use super::headers;
use super::ingress::Route;
use crate::config::{Provider, Timeouts};
use crate::dialect::{anthropic, openai, Dialect};

/// How long a resolved upstream address is reused.
const DNS_TTL: Duration = Duration::from_secs(30);
/// How long an idle pooled upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Idle upstream connections kept per connector.
const DEFAULT_POOL_SIZE: usize = 128;

/// The upstream side shared by all requests: connection pool and resolver.
pub struct Upstreams {
    connector: Pool,
    /// Providers with their own CA bundle get their own connector (pingora
    /// loads a connector's roots once, when it is built).
    private_ca: HashMap<String, Pool>,
    timeouts: Timeouts,
    /// Shared, not cloned per request: a peer is ~700 bytes with heap
    /// fields of its own.
    peers: RwLock<HashMap<String, (Arc<HttpPeer>, Instant)>>,
}

/// A connection taken for a request not sent yet ([`Upstreams::take`]).
pub struct Taken {
    peer: Arc<HttpPeer>,
    session: HttpSession,
    /// Whether the connection was pooled (a dead one is retried once).
    reused: bool,
    /// An HTTP/1.1 request's head in wire form.
    wire: Option<Bytes>,
}

/// An upstream call whose response header has arrived.
pub struct UpstreamCall {
    pub session: HttpSession,
    pub peer: Arc<HttpPeer>,
    /// The provider's name (which pool the session returns to).
    pub provider: String,
    /// When the request was sent.
    pub sent_at: Instant,
    /// Time from sending the request to the response header.
    pub ttfb: Duration,
}

impl Upstreams {
    pub fn new(timeouts: Timeouts, providers: &[Provider]) -> Upstreams {
        let private_ca = providers
            .iter()
            .filter_map(|p| {
                let ca = p.upstream.ca_file.as_ref()?;
                let mut options = ConnectorOptions::new(DEFAULT_POOL_SIZE);
                options.ca_file = Some(ca.to_string_lossy().into_owned());
                Some((p.name.clone(), Pool::new(Some(options))))
            })
            .collect();
        Upstreams {
            connector: Pool::new(None),
            private_ca,
            timeouts,
            peers: RwLock::new(HashMap::new()),
        }
    }

    /// The idle timeout between two chunks of a response.
    pub fn idle_timeout(&self) -> Duration {
        self.timeouts.idle
    }

    /// A peer for the provider, resolving its host asynchronously
    /// (`HttpPeer::new("host:port")` would block on DNS) and caching it briefly.
    async fn peer(&self, provider: &Provider) -> Result<Arc<HttpPeer>, ProxyError> {
        if let Ok(peers) = self.peers.read() {
            if let Some((peer, at)) = peers.get(&provider.name) {
                if at.elapsed() < DNS_TTL {
                    return Ok(peer.clone());
                }
            }
        }
        let up = &provider.upstream;
        let addr = match up.host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, up.port),
            Err(_) => tokio::net::lookup_host((up.host.as_str(), up.port))
                .await
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or_else(|| ProxyError::UpstreamUnreachable {
                    provider: provider.name.clone(),
                    detail: format!("cannot resolve {}", up.host),
                    sent: false,
                })?,
        };
        let mut peer = HttpPeer::new(addr, up.tls, up.host.clone());
        peer.options.connection_timeout = Some(self.timeouts.connect);
        peer.options.total_connection_timeout = Some(self.timeouts.connect * 2);
        peer.options.idle_timeout = Some(POOL_IDLE);
        if up.tls {
            peer.options.alpn = ALPN::H2H1;
        }
        let peer = Arc::new(peer);
        if let Ok(mut peers) = self.peers.write() {
            peers.insert(provider.name.clone(), (peer.clone(), Instant::now()));
        }
        Ok(peer)
    }

    /// Takes a connection for `request` (pooled, else new) and, for
    /// HTTP/1.1, writes its head out in wire form: everything up to the
    /// send that needs no durable record yet. Done before the request's
    /// open usage record commits, so the commit's wait is followed by the
    /// write alone (after that sleep the CPU's caches have gone cold, and
    /// this work measured ~30 µs there at c=1 against ~10 µs before it).
    pub async fn take(
        &self,
        provider: &Provider,
        request: &RequestHeader,
    ) -> Result<Taken, ProxyError> {
        let peer = self.peer(provider).await?;
        let (session, reused) = self
            .connector_for(&provider.name)
            .session(&peer)
            .await
            .map_err(|e| connect_error(provider, &e))?;
        let wire = match &session {
            HttpSession::H1(_) if request.method != http::Method::HEAD => {
                h1::http_req_header_to_wire(request).map(BytesMut::freeze)
            }
            _ => None,
        };
        Ok(Taken {
            peer,
            session,
            reused,
            wire,
        })
    }

    /// Takes a connection and sends on it: [`take`](Self::take) then
    /// [`send_on`](Self::send_on).
    pub async fn send(
        &self,
        provider: &Provider,
        request: RequestHeader,
        body: &Bytes,
    ) -> Result<UpstreamCall, ProxyError> {
        let taken = self.take(provider, &request).await?;
        self.send_on(provider, taken, request, body).await
    }

    /// Sends the request on a taken connection and waits for the response
    /// header. A pooled connection that turns out dead is retried once on
    /// a fresh one.
    pub async fn send_on(
        &self,
        provider: &Provider,
        taken: Taken,
        request: RequestHeader,
        body: &Bytes,
    ) -> Result<UpstreamCall, ProxyError> {
        let Taken {
            peer,
            mut session,
            mut reused,
            wire,
        } = taken;
        let mut attempt = 1;
        loop {
            let sent_at = Instant::now();
            let (mut sent_on, sent) = self
                .exchange(session, &peer, &request, wire.as_ref(), body)
                .await;
            match sent {
                Ok(()) => {
                    return Ok(UpstreamCall {
                        session: sent_on,
                        peer,
                        provider: provider.name.clone(),
                        sent_at,
                        ttfb: sent_at.elapsed(),
                    })
                }
                Err(Failure::Timeout) => {
                    sent_on.shutdown().await;
                    return Err(ProxyError::UpstreamTimeout {
                        provider: provider.name.clone(),
                        phase: "the first response byte",
                    });
                }
                Err(Failure::Io(e)) => {
                    sent_on.shutdown().await;
                    if reused && attempt < 2 {
                        tracing::debug!(provider = %provider.name, error = %e, "pooled upstream connection was dead, retrying on a new one");
                        attempt += 1;
                        (session, reused) = self
                            .connector_for(&provider.name)
                            .session(&peer)
                            .await
                            .map_err(|e| connect_error(provider, &e))?;
                        continue;
                    }
                    return Err(ProxyError::UpstreamUnreachable {
                        provider: provider.name.clone(),
                        detail: e.to_string(),
                        // The request may have reached the provider.
                        sent: true,
                    });
                }
            }
        }
    }

    /// Sends the request on `session` and reads the response header. An
    /// HTTP/1.1 request goes out in one write, head and body together
    /// (pingora's session writes and flushes its head first: a second
    /// syscall and, in plain text, a second segment the provider reads
    /// separately); the session then reads the answer as pingora's would.
    async fn exchange(
        &self,
        session: HttpSession,
        peer: &HttpPeer,
        request: &RequestHeader,
        wire: Option<&Bytes>,
        body: &Bytes,
    ) -> (HttpSession, Result<(), Failure>) {
        let mut session = match session {
            // A HEAD's answer has no body whatever its length says: only
            // a session that wrote the head itself knows it sent one.
            HttpSession::H1(h1) if request.method != http::Method::HEAD => {
                let mut stream = h1.into_inner();
                let sent = write_head_and_body(&mut stream, request, wire, body).await;
                let session = HttpSession::H1(h1::HttpSession::new_with_options(stream, peer));
                if let Err(e) = sent {
                    return (session, Err(Failure::Io(e)));
                }
                session
            }
            mut session => {
                if let Err(e) = write_request(&mut session, request, body).await {
                    return (session, Err(Failure::Io(e)));
                }
                session
            }
        };
        // pingora's timer (10 ms buckets shared by every request, and the
        // timeout pingora's own reads use), not a tokio timer registered and
        // removed per request.
        let read = match pingora::time::fast_timeout::fast_timeout(
            self.timeouts.first_byte,
            session.read_response_header(),
        )
        .await
        {
            Ok(result) => result.map_err(Failure::Io),
            Err(_) => Err(Failure::Timeout),
        };
        (session, read)
    }

    fn connector_for(&self, provider: &str) -> &Pool {
        self.private_ca.get(provider).unwrap_or(&self.connector)
    }

    /// Returns a finished session to the pool. Not an `async fn`: the call
    /// is taken apart first, so the future (inside every request's) holds
    /// only what the HTTP/1.1 release awaits with.
    pub fn release(&self, call: UpstreamCall) -> impl std::future::Future<Output = ()> + Send + '_ {
        let UpstreamCall {
            session,
            peer,
            provider,
            ..
        } = call;
        let pool = self.connector_for(&provider);
        let h1 = match session {
            HttpSession::H1(h1) => Some(h1),
            HttpSession::H2(h2) => {
                pool.h2.release_http_session(h2, &*peer, Some(POOL_IDLE));
                None
            }
            // Only made for a custom ALPN, which tollgate never asks for.
            HttpSession::Custom(_) => None,
        };
        async move {
            if let Some(h1) = h1 {
                pool.h1
                    .release_http_session(h1, &*peer, Some(POOL_IDLE))
                    .await;
            }
        }
    }
}

/// pingora's HTTP/1.1 and h2 connectors, chosen between as its combined
/// `connectors::http::Connector` does for the ALPNs tollgate asks for (none
/// in plain text; h2 then HTTP/1.1 over TLS): a free h2 stream, else a
/// pooled HTTP/1.1 connection, else a new connection. The pooled paths
/// are awaited inline and the connect is boxed: the connect's future (the
/// TLS handshake's included) is ~8 KiB, and inline it would size every
/// request's future, allocated and copied per request, where a warm pool
/// almost never connects.
struct Pool {
    h1: v1::Connector,
    h2: v2::Connector,
}

impl Pool {
    fn new(options: Option<ConnectorOptions>) -> Pool {
        Pool {
            h1: v1::Connector::new(options.clone()),
            h2: v2::Connector::new(options),
        }
    }

    /// A session to `peer`, and whether its connection was pooled.
    async fn session(&self, peer: &HttpPeer) -> pingora::Result<(HttpSession, bool)> {
        let h1_only = peer.options.alpn.get_max_http_version() == 1;
        if !h1_only {
            if let Some(h2) = self.h2.reused_http_session(peer).await? {
                return Ok((HttpSession::H2(h2), true));
            }
        }
        // The server may speak only HTTP/1.1 whatever was offered.
        if let Some(h1) = self.h1.reused_http_session(peer).await {
            return Ok((HttpSession::H1(h1), true));
        }
        if h1_only {
            let (h1, reused) = Box::pin(self.h1.get_http_session(peer)).await?;
            Ok((HttpSession::H1(h1), reused))
        } else {
            // h2, or HTTP/1.1 when the server's ALPN picks it.
            let session = Box::pin(self.h2.new_http_session::<_, ()>(peer)).await?;
            Ok((session, false))
        }
    }
}

/// The request through pingora's session: head, then body (h2).
async fn write_request(
    session: &mut HttpSession,
    request: &RequestHeader,
    body: &Bytes,
) -> pingora::Result<()> {
    session
        .write_request_header(Box::new(request.clone()))
        .await?;
    if !body.is_empty() {
        session.write_request_body(body.clone(), true).await?;
    }
    session.finish_request_body().await
}

/// An HTTP/1.1 request's head (`wire` when [`Upstreams::take`] wrote it
/// out already) and its whole (`Content-Length`) body in one vectored write.
async fn write_head_and_body<W: tokio::io::AsyncWrite + Unpin>(
    stream: &mut W,
    request: &RequestHeader,
    wire: Option<&Bytes>,
    body: &Bytes,
) -> pingora::Result<()> {
    use bytes::Buf;
    use tokio::io::AsyncWriteExt;
    let head = match wire {
        Some(wire) => wire.clone(),
        None => h1::http_req_header_to_wire(request)
            .ok_or_else(|| {
                pingora::Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "request-line contains forbidden delimiter bytes",
                )
            })?
            .freeze(),
    };
    let mut wire = head.chain(body.as_ref());
    stream.write_all_buf(&mut wire).await.map_err(|e| {
        pingora::Error::because(ErrorType::WriteError, "while writing the request", e)
    })?;
    stream.flush().await.map_err(|e| {
        pingora::Error::because(ErrorType::WriteError, "while flushing the request", e)
    })
}

enum Failure {
    Io(Box<pingora::Error>),
    Timeout,
}

fn connect_error(provider: &Provider, e: &pingora::Error) -> ProxyError {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => {
            ProxyError::UpstreamTimeout {
                provider: provider.name.clone(),
                phase: "the connection",
            }
        }
        _ => ProxyError::UpstreamUnreachable {
            provider: provider.name.clone(),
            detail: e.to_string(),
            sent: false,
        },
    }
}

/// The upstream request: the client's headers minus hop-by-hop, encoding
/// negotiation, `x-tollgate-*` and the client's credentials when tollgate
/// holds a key for this provider or when they are a gateway key
/// (`gateway_key`: never sent to a provider); plus the provider key.
/// Whether a credential header holds a tollgate gateway key (bare or after
/// `Bearer `): such a key is never sent to a provider, whatever the config.
fn is_gateway_key(value: &[u8]) -> bool {
    let v = value.trim_ascii();
    let v = v
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
        .map_or(v, |_| v[7..].trim_ascii_start());
    v.starts_with(crate::keys::LIVE_PREFIX.as_bytes())
        || v.starts_with(crate::keys::TEST_PREFIX.as_bytes())
}

///
/// `foreign`: a routed attempt at another provider than the one the
/// client's path named, with the client's dialect. The client's credentials
/// are for its own provider and never go to another; when the dialects
/// differ, the client dialect's own headers (`anthropic-*`, `openai-*`)
/// stay behind and an Anthropic target gets its required `anthropic-version`.
pub fn build_request(
    route: &Route,
    client: &RequestHeader,
    body_len: usize,
    gateway_key: bool,
    injected: Option<&crate::secret::Secret>,
    foreign: Option<Dialect>,
) -> Result<RequestHeader, ProxyError> {
    let provider = &route.provider;
    let internal = |e: Box<pingora::Error>| ProxyError::Internal(e.to_string());
    let mut req = RequestHeader::build_no_case(
        client.method.clone(),
        route.upstream_path.as_bytes(),
        Some(client.headers.len() + 3),
    )
    .map_err(internal)?;
    let inject = injected.is_some();
    let strip_credentials = inject || gateway_key || foreign.is_some();
    let own_prefix = match foreign {
        Some(d) if d != provider.dialect => Some(match d {
            Dialect::Anthropic => "anthropic-",
            Dialect::OpenAi => "openai-",
        }),
        _ => None,
    };
    for (name, value) in client.headers.iter() {
        let n = name.as_str();
        if headers::HOP_BY_HOP.contains(&n)
            || n.starts_with(headers::TOLLGATE_PREFIX)
            // The tap must see plain bytes.
            || n == "accept-encoding"
            || ((n == anthropic::X_API_KEY || n == openai::AUTHORIZATION)
                && (strip_credentials || is_gateway_key(value.as_bytes())))
            || own_prefix.is_some_and(|p| n.starts_with(p))
        {
            continue;
        }
        req.append_header(name.clone(), value.clone())
            .map_err(internal)?;
    }
    if own_prefix.is_some()
        && provider.dialect == Dialect::Anthropic
        && !req.headers.contains_key(anthropic::VERSION)
    {
        req.insert_header(anthropic::VERSION, anthropic::API_VERSION)
            .map_err(internal)?;
    }
    req.insert_header(http::header::HOST, provider.upstream.authority())
        .map_err(internal)?;
    if body_len > 0 || client.method == http::Method::POST {
        req.insert_header(http::header::CONTENT_LENGTH, body_len.to_string())
            .map_err(internal)?;
    }
    if let Some(key) = injected {
        let mut value = http::HeaderValue::from_str(&provider.dialect.auth_value(key.expose()))
            .map_err(|_| {
                ProxyError::Internal(format!(
                    "the key for provider {} is not a valid header value",
                    provider.name
                ))
            })?;
        value.set_sensitive(true);
        req.insert_header(provider.dialect.auth_header(), value)
            .map_err(internal)?;
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::{is_gateway_key, write_head_and_body};

    /// Records each write call; takes everything offered.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl tokio::io::AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let all = bufs
                .iter()
                .flat_map(|b| b.iter().copied())
                .collect::<Vec<u8>>();
            let n = all.len();
            self.0.push(all);
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn an_http1_request_goes_out_in_one_write() {
        let mut req =
            pingora::http::RequestHeader::build_no_case("POST", b"/v1/messages", None).unwrap();
        req.insert_header("content-length", "13").unwrap();
        let body = bytes::Bytes::from_static(b"{\"model\":\"m\"}");
        // Written out here, or beforehand (`Upstreams::take`): the same bytes.
        let early = super::h1::http_req_header_to_wire(&req).unwrap().freeze();
        for head in [None, Some(&early)] {
            let mut w = Writes::default();
            write_head_and_body(&mut w, &req, head, &body)
                .await
                .unwrap();
            assert_eq!(w.0.len(), 1, "head and body in one write: {:?}", w.0);
            let wire = String::from_utf8(w.0.remove(0)).unwrap();
            assert!(wire.starts_with("POST /v1/messages HTTP/1.1\r\n"), "{wire}");
            assert!(wire.ends_with("\r\n\r\n{\"model\":\"m\"}"), "{wire}");
        }
    }

    #[test]
    fn gateway_keys_are_recognised_in_both_credential_forms() {
        assert!(is_gateway_key(b"tg_live_abc"));
        assert!(is_gateway_key(b"  tg_test_abc "));
        assert!(is_gateway_key(b"Bearer tg_live_abc"));
        assert!(is_gateway_key(b"bearer   tg_test_abc"));
        assert!(!is_gateway_key(b"sk-ant-api03-x"));
        assert!(!is_gateway_key(b"Bearer sk-proj-x"));
        assert!(!is_gateway_key(b""));
    }
}
