//! Ingress, HTTPS_PROXY mode: the forward-proxy listener.
//!
//! pingora's proxy answers `CONNECT` with 405, so this is a `ServerApp` of
//! its own (DESIGN.md, "Pingora notes"):
//!
//! - `CONNECT host:443` to an intercepted provider host → `200`, then TLS is
//!   terminated with a leaf minted for that host by the sidecar's CA (ALPN
//!   h2 and http/1.1), and the decrypted connection is handed to the same
//!   pingora HTTP app as base-URL mode: one pipeline (metering, cache,
//!   budgets, key injection, receipts). Its requests carry `Host: <host>`,
//!   which routes them to that provider.
//! - `CONNECT` to any other host → a blind byte-for-byte tunnel, or `403`
//!   with `tunnel_policy = "deny"`.
//! - An absolute-form request (`GET http://host/...`) is forwarded to its
//!   host (one request, `Connection: close`).
//! - Optional `Proxy-Authorization: Basic` (its SHA-256 compared in constant
//!   time), handshake and idle timeouts. A client that does not trust the CA
//!   fails the handshake, and nothing reaches the provider.

use std::pin::Pin;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::Stream;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::ca::Minter;
use crate::config::TunnelPolicy;

/// Largest CONNECT / request head read.
const MAX_HEAD: usize = 16 * 1024;

/// The forward-proxy listener's app.
pub struct Intercept {
    /// The base-URL mode HTTP app: decrypted connections go to it.
    pub http: Arc<pingora::proxy::HttpProxy<super::Tollgate>>,
    pub minter: Arc<Minter>,
    pub policy: TunnelPolicy,
    /// SHA-256 of `user:password`, when proxy authentication is on.
    pub auth_sha256: Option<[u8; 32]>,
    pub handshake: Duration,
    pub idle: Duration,
    /// `timeouts.request_head`, for HTTP/1 tunnels' requests.
    pub request_head: Duration,
    /// The listener is reachable from other machines: tunnels and forwarded
    /// requests must not reach this host's own services (the admin API) or
    /// a cloud metadata endpoint on their behalf (see `is_local`).
    pub guard_local: bool,
    /// Per intercepted host: its leaf and the TLS configuration serving it.
    pub tls: std::sync::Mutex<TlsConfigs>,
}

/// Per intercepted host: the leaf a TLS configuration was built for.
pub type TlsConfigs =
    std::collections::HashMap<String, (Arc<rustls::sign::CertifiedKey>, Arc<rustls::ServerConfig>)>;

/// A parsed request head.
struct Head {
    method: String,
    target: String,
    /// Header lines as sent (for forwarding absolute-form requests).
    headers: Vec<(String, Vec<u8>)>,
    /// Bytes after the head that were already read.
    rest: Vec<u8>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Reads a request head (bounded); `None` on EOF, garbage or overflow.
async fn read_head(stream: &mut Stream) -> Option<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                return Some(Head {
                    method: req.method?.to_string(),
                    target: req.path?.to_string(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), h.value.to_vec()))
                        .collect(),
                    rest: buf[len..].to_vec(),
                });
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            _ => return None,
        }
    }
}

/// `host:port` → (lowercase host, port); IPv6 in brackets.
fn split_authority(authority: &str, default_port: u16) -> Option<(String, u16)> {
    let authority = authority.trim();
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (authority, default_port),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some((host.trim_end_matches('.').to_ascii_lowercase(), port))
}

/// Tells the client its tunnel is open (flushed: pingora's stream buffers writes).
async fn established(stream: &mut Stream) -> bool {
    stream
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .is_ok()
        && stream.flush().await.is_ok()
}

async fn reply(stream: &mut Stream, status: &str, extra: &str) {
    let text =
        format!("HTTP/1.1 {status}\r\n{extra}content-length: 0\r\nconnection: close\r\n\r\n");
    let _ = stream.write_all(text.as_bytes()).await;
    let _ = stream.flush().await;
}

impl Intercept {
    fn authorized(&self, head: &Head) -> bool {
        let Some(expected) = self.auth_sha256 else {
            return true;
        };
        let Some(value) = head.header("proxy-authorization") else {
            return false;
        };
        let value = String::from_utf8_lossy(value);
        let Some(b64) = value.trim().strip_prefix("Basic ") else {
            return false;
        };
        use base64::Engine as _;
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
            return false;
        };
        let got = crate::keys::sha256(&String::from_utf8_lossy(&decoded));
        bool::from(got.ct_eq(&expected))
    }

    async fn connect(self: &Arc<Self>, mut stream: Stream, head: Head, shutdown: &ShutdownWatch) {
        let Some((host, port)) = split_authority(&head.target, 443) else {
            reply(&mut stream, "400 Bad Request", "").await;
            return;
        };
        if port == 443 && self.minter.intercepts(&host) {
            return self.intercept(stream, host, head.rest, shutdown).await;
        }
        if self.policy == TunnelPolicy::Deny {
            tracing::info!(host = %host, port, "CONNECT refused by tunnel_policy = deny");
            reply(&mut stream, "403 Forbidden", "").await;
            return;
        }
        let upstream = match self.dial(&stream, &host, port).await {
            Ok(s) => s,
            Err(status) => {
                reply(&mut stream, status, "").await;
                return;
            }
        };
        if !established(&mut stream).await {
            return;
        }
        tunnel(stream, upstream, head.rest, self.idle).await;
    }

    /// Terminates TLS for `host` and hands the connection to the pipeline.
    async fn intercept(
        self: &Arc<Self>,
        mut stream: Stream,
        host: String,
        pending: Vec<u8>,
        shutdown: &ShutdownWatch,
    ) {
        let leaf = match self.minter.leaf(&host) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot intercept");
                reply(&mut stream, "502 Bad Gateway", "").await;
                return;
            }
        };
        if !established(&mut stream).await {
            return;
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls_config(&host, leaf));
        // A ClientHello sent along with the CONNECT is replayed first.
        let stream = Prefixed {
            pending,
            at: 0,
            inner: stream,
        };
        let tls = match tokio::time::timeout(self.handshake, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                // Typically a client that does not trust the CA.
                tracing::info!(host = %host, error = %e, "intercepted TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(host = %host, "intercepted TLS handshake timed out");
                return;
            }
        };
        let alpn = match tls.get_ref().1.alpn_protocol() {
            Some(b"h2") => Some(ALPN::H2),
            Some(_) => Some(ALPN::H1),
            None => None,
        };
        // The pipeline routes by the tunnel's host, not by what requests claim.
        let digest = pingora::http::ResponseHeader::build(200, Some(0))
            .ok()
            .map(|reply| {
                Arc::new(ProxyDigest::new(
                    Box::new(reply),
                    Some(Box::new(TunnelHost(host))),
                ))
            });
        let alpn_h2 = alpn == Some(ALPN::H2);
        let stream: Stream = Box::new(Intercepted {
            tls,
            alpn,
            id: next_id(),
            digest,
        });
        // Request heads on the clock, as on the base-URL listener.
        let stream = if alpn_h2 {
            stream
        } else {
            super::ingress::head::clocked(stream, self.request_head)
        };
        // pingora's HTTP app serves the connection to its end (keep-alive, h2).
        let _ = self.http.process_new(stream, shutdown).await;
    }

    /// The TLS configuration for `host`'s current leaf (kept, so sessions
    /// resume; rebuilt when the leaf is renewed).
    fn tls_config(
        &self,
        host: &str,
        leaf: Arc<rustls::sign::CertifiedKey>,
    ) -> Arc<rustls::ServerConfig> {
        if let Ok(configs) = self.tls.lock() {
            if let Some((l, c)) = configs.get(host) {
                if Arc::ptr_eq(l, &leaf) {
                    return c.clone();
                }
            }
        }
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(leaf.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        if let Ok(mut configs) = self.tls.lock() {
            configs.insert(host.to_string(), (leaf, config.clone()));
        }
        config
    }

    /// Connects to `host:port` for a tunnel or a forwarded request (`client`
    /// asked for it), within the handshake timeout; the error is the status
    /// line to answer with. The address connected to is one that was checked
    /// (no second lookup).
    async fn dial(
        &self,
        client: &Stream,
        host: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, &'static str> {
        // The address the client reached this listener on is this host too.
        let own = client
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let attempt = async {
            let addrs = tokio::net::lookup_host((host, port))
                .await
                .map_err(|_| "502 Bad Gateway")?;
            let (mut refused, mut tried) = (false, false);
            for addr in addrs {
                let ip = addr.ip().to_canonical();
                if self.guard_local && (is_local(ip) || Some(ip) == own.map(|o| o.to_canonical())) {
                    refused = true;
                    continue;
                }
                tried = true;
                if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                    return Ok(s);
                }
            }
            if refused && !tried {
                tracing::info!(host = %host, port, "tunnel to a local address refused");
                Err("403 Forbidden")
            } else {
                Err("502 Bad Gateway")
            }
        };
        tokio::time::timeout(self.handshake, attempt)
            .await
            .unwrap_or(Err("504 Gateway Timeout"))
    }

    /// An absolute-form request (`GET http://host/path`): forwarded to its
    /// host as one origin-form request.
    async fn forward(&self, mut stream: Stream, head: Head) {
        let Some(rest) = head.target.strip_prefix("http://") else {
            reply(&mut stream, "400 Bad Request", "").await;
            return;
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let Some((host, port)) = split_authority(authority, 80) else {
            reply(&mut stream, "400 Bad Request", "").await;
            return;
        };
        if self.minter.intercepts(&host) {
            // Never in the clear: the request would carry its key unencrypted
            // and skip every cost control.
            tracing::info!(host = %host, "plain-HTTP request to a provider host refused");
            reply(
                &mut stream,
                "403 Forbidden",
                "x-tollgate-error: use https:// for provider hosts\r\n",
            )
            .await;
            return;
        }
        if self.policy == TunnelPolicy::Deny {
            reply(&mut stream, "403 Forbidden", "").await;
            return;
        }
        let mut upstream = match self.dial(&stream, &host, port).await {
            Ok(s) => s,
            Err(status) => {
                reply(&mut stream, status, "").await;
                return;
            }
        };
        let mut out = format!("{} {path} HTTP/1.1\r\n", head.method).into_bytes();
        for (name, value) in &head.headers {
            let n = name.to_ascii_lowercase();
            if n.starts_with("proxy-") || n == "connection" || n == "keep-alive" {
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"connection: close\r\n\r\n");
        if upstream.write_all(&out).await.is_err() {
            reply(&mut stream, "502 Bad Gateway", "").await;
            return;
        }
        tunnel(stream, upstream, head.rest, self.idle).await;
    }
}

/// This host's own services: loopback, unspecified (`0.0.0.0/8`, `::`),
/// link-local (where most cloud metadata endpoints live) and the metadata
/// endpoints outside it (AWS's IPv6 `fd00:ec2::254`, Alibaba's
/// `100.100.100.200`), IPv4-mapped forms included.
fn is_local(ip: std::net::IpAddr) -> bool {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.octets()[0] == 0
                || v4.is_link_local()
                || v4 == std::net::Ipv4Addr::new(100, 100, 100, 200)
        }
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

/// Copies bytes both ways, each direction on its own (a slow reader on
/// one side never stalls the other), until both sides have closed or
/// nothing has moved either way for `idle`.
async fn tunnel(
    mut client: Stream,
    mut upstream: tokio::net::TcpStream,
    pending: Vec<u8>,
    idle: Duration,
) {
    if !pending.is_empty() && upstream.write_all(&pending).await.is_err() {
        return;
    }
    let started = tokio::time::Instant::now();
    let last = std::sync::atomic::AtomicU64::new(0);
    let (cr, cw) = tokio::io::split(client.as_mut());
    let (ur, uw) = upstream.split();
    let both = async {
        tokio::join!(
            pump(cr, uw, idle, started, &last),
            pump(ur, cw, idle, started, &last)
        )
    };
    let watchdog = async {
        loop {
            tokio::time::sleep(idle / 4).await;
            let quiet_ms =
                (started.elapsed().as_millis() as u64).saturating_sub(last.load(Ordering::Relaxed));
            if quiet_ms >= idle.as_millis() as u64 {
                return;
            }
        }
    };
    tokio::select! {
        _ = both => {}
        () = watchdog => {}
    }
}

/// One direction of a tunnel: reads, writes (bounded by `idle`), notes
/// activity; on EOF shuts the other side's write half.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    idle: Duration,
    started: tokio::time::Instant,
    last: &std::sync::atomic::AtomicU64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let wrote = tokio::time::timeout(idle, async {
            to.write_all(&buf[..n]).await?;
            to.flush().await
        })
        .await;
        if !matches!(wrote, Ok(Ok(()))) {
            return;
        }
        last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}

#[async_trait]
impl ServerApp for Intercept {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let head = match tokio::time::timeout(self.handshake, read_head(&mut stream)).await {
            Ok(Some(head)) => head,
            Ok(None) => {
                reply(&mut stream, "400 Bad Request", "").await;
                return None;
            }
            Err(_) => return None,
        };
        if !self.authorized(&head) {
            reply(
                &mut stream,
                "407 Proxy Authentication Required",
                "proxy-authenticate: Basic realm=\"tollgate\"\r\n",
            )
            .await;
            return None;
        }
        if head.method.eq_ignore_ascii_case("CONNECT") {
            self.connect(stream, head, shutdown).await;
        } else {
            self.forward(stream, head).await;
        }
        None
    }

    /// Lets the HTTP app close its idle keep-alive connections at shutdown.
    async fn cleanup(&self) {
        self.http.cleanup().await;
    }
}

/// Serves one certificate whatever the client asks for.
#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn next_id() -> UniqueIDType {
    static NEXT: AtomicI32 = AtomicI32::new(1 << 30);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The host an intercepted tunnel was opened to (its `CONNECT` target, the
/// name its leaf certificate was minted for), carried to the pipeline in the
/// connection's proxy digest.
#[derive(Debug)]
pub struct TunnelHost(pub String);

/// The host of the intercepted tunnel `session` arrived through, if any.
pub fn tunnel_host(session: &pingora::proxy::Session) -> Option<&str> {
    session
        .digest()?
        .proxy_digest
        .as_ref()?
        .user_data
        .as_ref()?
        .downcast_ref::<TunnelHost>()
        .map(|t| t.0.as_str())
}

/// A decrypted intercepted connection, as pingora's transport.
struct Intercepted {
    tls: tokio_rustls::server::TlsStream<Prefixed>,
    alpn: Option<ALPN>,
    id: UniqueIDType,
    /// The `CONNECT` that opened it (its reply and `TunnelHost`).
    digest: Option<Arc<ProxyDigest>>,
}

impl std::fmt::Debug for Intercepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intercepted").field("id", &self.id).finish()
    }
}

impl AsyncRead for Intercepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Intercepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Intercepted {
    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(&mut self.tls).await;
    }
}

impl UniqueID for Intercepted {
    fn id(&self) -> UniqueIDType {
        self.id
    }
}

impl Ssl for Intercepted {
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.alpn.clone()
    }
}

impl GetTimingDigest for Intercepted {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.tls.get_ref().0.inner.get_timing_digest()
    }
}

impl GetProxyDigest for Intercepted {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.digest.clone()
    }
}

impl GetSocketDigest for Intercepted {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.tls.get_ref().0.inner.get_socket_digest()
    }
}

impl Peek for Intercepted {}

/// A stream that first yields bytes already read from it.
struct Prefixed {
    pending: Vec<u8>,
    at: usize,
    inner: Stream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.pending.len() {
            let n = buf.remaining().min(self.pending.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.pending[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses() {
        for local in [
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
            "169.254.169.254",
            "::1",
            "::",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "0.1.2.3",
            "100.100.100.200",
            "fd00:ec2::254",
        ] {
            assert!(is_local(local.parse().unwrap()), "{local}");
        }
        for remote in [
            "10.0.0.1",
            "192.168.1.1",
            "1.1.1.1",
            "2606:4700::1111",
            "fec0::1",
        ] {
            assert!(!is_local(remote.parse().unwrap()), "{remote}");
        }
    }

    #[test]
    fn authorities() {
        assert_eq!(
            split_authority("API.anthropic.com:443", 443),
            Some(("api.anthropic.com".into(), 443))
        );
        assert_eq!(
            split_authority("example.com", 80),
            Some(("example.com".into(), 80))
        );
        assert_eq!(
            split_authority("[::1]:8443", 443),
            Some(("::1".into(), 8443))
        );
        assert_eq!(split_authority(":443", 443), None);
        assert_eq!(split_authority("h:notaport", 443), None);
    }
}
