//! The request head before `request_filter` sees it: its deadline, and
//! pingora's own answers to heads it refuses.
//!
//! Slow clients: a request head must arrive within `timeouts.request_head`.
//! pingora bounds each read of the head (60 s), not the whole head, so a
//! client sending a byte every few seconds would hold its connection for
//! ever.
//!
//! The base-URL listener wraps each connection in [`Clocked`] (so does
//! HTTPS_PROXY mode each HTTP/1 tunnel; h2 multiplexes requests on one
//! connection, and pingora's h2 server bounds idle connections itself).
//! Its clock runs from the accept (on a kept-alive connection, from the
//! next request's first byte) until `request_filter` has the head
//! ([`head_read`]); [`exchange_done`] sets it up for the next request.
//! When time runs out, `Clocked` writes a 408 itself, in the shape of the
//! dialect the bytes so far speak, and ends the stream for pingora, which
//! closes the connection. (A client that sent nothing at all is just
//! closed.)
//!
//! h2c: a cleartext connection that opens with the HTTP/2 preface (prior
//! knowledge) is handed to pingora's h2 server, which bounds idle
//! connections itself; its clock stops at the preface. Telling the two
//! apart reads only as far as the bytes can still be the preface (an
//! HTTP/1 request line differs within its first two bytes), within the
//! head deadline, and replays what it read.
//!
//! Refused heads: what pingora's parser refuses (a garbage request line,
//! NUL in a header, too many or too large headers) and `CONNECT` it answers
//! itself, before any hook, with a bare status. Anything written before
//! `request_filter` has the head is such an answer, so `Clocked` writes
//! tollgate's own instead: the same status, `x-tollgate-error`, the error
//! shape of the dialect the bytes so far speak.
//!
//! `Clocked` also carries the connection's held write ([`super::held`]):
//! the relay holds a streamed response's head back for its first event.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::{HttpProxy, Session};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::super::error::ProxyError;
use super::super::Tollgate;
use super::held::HeldWrite;
use crate::dialect::Dialect;

/// How much of a head is kept to tell its dialect.
const SNIFF_BYTES: usize = 4096;
/// The start of every HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The base-URL listener: pingora's HTTP proxy behind a head deadline.
pub struct Listener {
    pub http: Arc<HttpProxy<Tollgate>>,
    pub request_head: Duration,
}

#[async_trait]
impl ServerApp for Listener {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.http
            .process_new(clocked(stream, self.request_head), shutdown)
            .await
    }

    async fn cleanup(&self) {
        self.http.cleanup().await;
    }
}

/// `stream` with its request heads on a `limit` clock.
pub fn clocked(stream: Stream, limit: Duration) -> Stream {
    Box::new(Clocked::new(stream, limit))
}

/// `request_filter` has the head: the clock stops.
pub fn head_read(session: &Session) {
    if let Some(c) = clock_of(session) {
        *c.phase() = Phase::Served;
    }
}

/// The exchange is over: the next request's clock starts at its first byte.
pub fn exchange_done(session: &Session) {
    if let Some(c) = clock_of(session) {
        *c.phase() = Phase::Idle;
        // An arm no write used (the write failed first) ends here.
        c.held.disarm();
    }
}

/// Holds the response's next write back until the write after it, so that
/// both reach the client in one system call (see [`super::held`]); the
/// caller's next write must follow without waiting. Nothing is held on
/// HTTP/2 (its frames are written by pingora's h2 server) or on a stream
/// that is not wrapped.
pub fn hold_next_write(session: &Session) {
    if let Some(c) = clock_of(session).filter(|c| !c.h2) {
        c.held.arm();
    }
}

fn clock_of(session: &Session) -> Option<&Clocked> {
    // The stream itself, not its box, is the `Clocked`.
    let stream: &Stream = session.downstream_session.stream()?;
    (**stream).as_any().downcast_ref::<Clocked>()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Between requests: nothing of the next one has arrived.
    Idle,
    /// A head is arriving; it must be complete by then.
    Head(Instant),
    /// The head is in; the exchange runs (its body has a bound of its own).
    Served,
}

/// A client connection whose request heads are on the clock.
pub struct Clocked {
    inner: Stream,
    limit: Duration,
    /// Shared with `request_filter`, which sees the stream through `&`.
    phase: Mutex<Phase>,
    timer: Option<(Instant, Pin<Box<Sleep>>)>,
    /// The start of the current head, to tell its dialect.
    seen: Vec<u8>,
    /// The 408 being written, and how much of it is out.
    refusal: Option<(Vec<u8>, usize)>,
    /// tollgate's answer written in place of pingora's, and how much of it
    /// is out.
    replacement: Option<(Vec<u8>, usize)>,
    /// The stream has ended for pingora (see [`Clocked::hang_up`]).
    hung_up: bool,
    /// Bytes read to tell h2c from HTTP/1, not yet handed to pingora.
    peeked: Vec<u8>,
    /// The connection speaks HTTP/2: no head clock.
    h2: bool,
    /// A response write held back for the next ([`hold_next_write`]).
    held: HeldWrite,
}

impl Clocked {
    fn new(inner: Stream, limit: Duration) -> Clocked {
        Clocked {
            inner,
            limit,
            phase: Mutex::new(Phase::Head(Instant::now() + limit)),
            timer: None,
            seen: Vec::new(),
            refusal: None,
            replacement: None,
            hung_up: false,
            peeked: Vec::new(),
            h2: false,
            held: HeldWrite::default(),
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        // A poisoned lock still holds a valid phase.
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the head's deadline has passed (registering for it if not).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Phase::Head(deadline) = *self.phase() else {
            return false;
        };
        let timer = match &mut self.timer {
            Some((at, sleep)) if *at == deadline => sleep,
            slot => {
                let (_, sleep) =
                    slot.insert((deadline, Box::pin(tokio::time::sleep_until(deadline))));
                sleep
            }
        };
        timer.as_mut().poll(cx).is_ready()
    }

    /// Notes bytes just read: the first of a new head starts its clock.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        // The whole preface, in the first bytes of the connection: HTTP/2.
        if self.h2 || (self.seen.is_empty() && bytes.starts_with(H2_PREFACE)) {
            self.h2 = true;
            *self.phase() = Phase::Served;
            return;
        }
        let mut phase = self.phase();
        match *phase {
            Phase::Idle => {
                *phase = Phase::Head(Instant::now() + self.limit);
                drop(phase);
                self.seen.clear();
            }
            Phase::Head(_) => drop(phase),
            Phase::Served => return,
        }
        let room = SNIFF_BYTES.saturating_sub(self.seen.len());
        self.seen.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Writes the 408 (nothing for a client that sent nothing).
    fn poll_refuse(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let limit = self.limit;
        let seen = &self.seen;
        let (bytes, written) = self
            .refusal
            .get_or_insert_with(|| (refusal(seen, limit), 0));
        poll_write_all(&mut self.inner, cx, bytes, written)
    }

    /// Part of a head arrived and no more will (the client left, or was
    /// refused): pingora is to drop the connection quietly. It logs a head
    /// cut short at ERROR but one it cannot parse at debug, and only a
    /// client's own mistake is worth the latter: so it is handed a NUL,
    /// which no head may contain, and whatever it answers goes nowhere.
    /// Then the stream ends.
    fn hang_up(&mut self, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let first = !self.hung_up;
        self.hung_up = true;
        if first && !self.seen.is_empty() && buf.remaining() > 0 {
            self.replacement = Some((Vec::new(), 0));
            buf.put_slice(b"\0");
        }
        Poll::Ready(Ok(()))
    }

    /// A head is partly in.
    fn mid_head(&self) -> bool {
        matches!(*self.phase(), Phase::Head(_)) && !self.seen.is_empty()
    }

    /// pingora is writing its own answer to a head it refused (`first`: the
    /// start of what it writes): writes tollgate's instead and reports
    /// pingora's `len` bytes written. None: not such an answer.
    fn poll_replace(
        &mut self,
        cx: &mut Context<'_>,
        first: &[u8],
        len: usize,
    ) -> Option<Poll<io::Result<usize>>> {
        if self.replacement.is_none() {
            if *self.phase() == Phase::Served {
                return None;
            }
            let status = status_of(first)?;
            self.replacement = Some((replacement(status, &self.seen), 0));
        }
        let (bytes, written) = self.replacement.as_mut()?;
        // pingora's own bytes (its status line, headers, empty body) go nowhere.
        Some(poll_write_all(&mut self.inner, cx, bytes, written).map_ok(|()| len))
    }
}

/// Writes `bytes[*written..]` to `inner` and flushes it.
fn poll_write_all(
    inner: &mut Stream,
    cx: &mut Context<'_>,
    bytes: &[u8],
    written: &mut usize,
) -> Poll<io::Result<()>> {
    while *written < bytes.len() {
        match std::task::ready!(Pin::new(&mut *inner).poll_write(cx, &bytes[*written..])) {
            Ok(0) => break,
            Ok(n) => *written += n,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Pin::new(inner).poll_flush(cx)
}

/// The status of an HTTP/1 response head (`HTTP/1.1 400 …`).
fn status_of(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// tollgate's answer for a head pingora refused with `status`.
fn replacement(status: u16, seen: &[u8]) -> Vec<u8> {
    let err = match status {
        405 => ProxyError::MethodNotAllowed(
            "CONNECT is served by tollgate's HTTPS_PROXY listener (forward_proxy_listen), \
             not the base-URL one"
                .into(),
        ),
        _ => ProxyError::MalformedRequest {
            status,
            detail: "malformed request line, headers or framing".into(),
        },
    };
    http1_response(&err, sniff_dialect(seen))
}

/// The 408 for a head that did not arrive in time, as HTTP/1.1 bytes.
fn refusal(seen: &[u8], limit: Duration) -> Vec<u8> {
    if seen.is_empty() {
        return Vec::new();
    }
    let err = ProxyError::ClientTimeout {
        what: "the request head",
        limit,
    };
    http1_response(&err, sniff_dialect(seen))
}

/// `err`'s response, closing the connection, as HTTP/1.1 bytes.
fn http1_response(err: &ProxyError, dialect: Dialect) -> Vec<u8> {
    let id = uuid::Uuid::now_v7().to_string();
    let (header, body) = err.response(dialect, &id);
    tracing::debug!(request_id = %id, error = %err, "request refused");
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        header.status.as_u16(),
        header.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in header.headers.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(&body);
    out
}

/// The dialect of a partial head, as `ingress::guess_dialect` tells it of
/// a whole one.
fn sniff_dialect(head: &[u8]) -> Dialect {
    let lower = head.to_ascii_lowercase();
    let has = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
    if has(b"\nanthropic-version:") || has(b"\nx-api-key:") || has(b"/messages") {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    }
}

// === impl Clocked: pingora's transport ===

impl std::fmt::Debug for Clocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clocked")
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncRead for Clocked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.hung_up {
            return this.hang_up(buf);
        }
        if this.refusal.is_some() || this.expired(cx) {
            std::task::ready!(this.poll_refuse(cx))?;
            return this.hang_up(buf);
        }
        if !this.peeked.is_empty() {
            let n = this.peeked.len().min(buf.remaining());
            let bytes: Vec<u8> = this.peeked.drain(..n).collect();
            buf.put_slice(&bytes);
            this.saw(&bytes);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() == before && this.mid_head() => {
                this.hang_up(buf)
            }
            Poll::Ready(Err(_)) if this.mid_head() => this.hang_up(buf),
            Poll::Ready(Ok(())) => {
                this.saw(&buf.filled()[before..]);
                read
            }
            _ => read,
        }
    }
}

impl AsyncWrite for Clocked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(replaced) = self.poll_replace(cx, buf, buf.len()) {
            return replaced;
        }
        let this = &mut *self;
        if this.held.active() {
            return this
                .held
                .poll_write(&mut this.inner, cx, &[io::IoSlice::new(buf)]);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.held.skips_flush() {
            return Poll::Ready(Ok(()));
        }
        std::task::ready!(this.held.poll_release(&mut this.inner, cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.held.poll_release(&mut this.inner, cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        let len = bufs.iter().map(|b| b.len()).sum();
        if let Some(replaced) = self.poll_replace(cx, first, len) {
            return replaced;
        }
        let this = &mut *self;
        if this.held.active() {
            return this.held.poll_write(&mut this.inner, cx, bufs);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Clocked {
    async fn shutdown(&mut self) {
        // What is held goes out before the connection ends.
        let (held, inner) = (&mut self.held, &mut self.inner);
        let _ = std::future::poll_fn(|cx| held.poll_release(inner, cx)).await;
        self.inner.shutdown().await;
    }
}

impl UniqueID for Clocked {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Clocked {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Clocked {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Clocked {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Clocked {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        self.inner.set_socket_digest(socket_digest);
    }
}

#[async_trait]
impl Peek for Clocked {
    /// Fills `buf` with the connection's first bytes as far as they can
    /// still be the h2 preface, the rest zeros (so pingora sees the
    /// preface exactly when it is there); what was read is replayed.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        use tokio::io::AsyncReadExt as _;
        let deadline = match *self.phase() {
            Phase::Head(d) => d,
            _ => Instant::now() + self.limit,
        };
        let mut n = self.peeked.len().min(buf.len());
        buf[..n].copy_from_slice(&self.peeked[..n]);
        while n < buf.len() && buf[..n] == H2_PREFACE[..n.min(H2_PREFACE.len())] {
            let read = tokio::time::timeout_at(deadline, self.inner.read(&mut buf[n..]))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request in time"))??;
            if read == 0 {
                break;
            }
            self.peeked.extend_from_slice(&buf[n..n + read]);
            n += read;
        }
        buf[n..].fill(0);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_head_tells_its_dialect() {
        assert_eq!(
            sniff_dialect(b"POST /v1/messages HTTP/1.1\r\n"),
            Dialect::Anthropic
        );
        assert_eq!(
            sniff_dialect(b"POST /x HTTP/1.1\r\nAnthropic-Version: 2023"),
            Dialect::Anthropic
        );
        assert_eq!(
            sniff_dialect(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"),
            Dialect::OpenAi
        );
    }

    /// `bytes` is a whole response: `status_line`, `kind`, a JSON error
    /// body in Anthropic's shape (when `anthropic`), the connection closed.
    fn assert_response(bytes: &[u8], status_line: &str, kind: &str, anthropic: bool) {
        let text = String::from_utf8_lossy(bytes);
        assert!(text.starts_with(status_line), "{text}");
        let marker = format!("x-tollgate-error: {kind}\r\n");
        assert!(text.contains(&marker), "{text}");
        assert!(text.contains("connection: close\r\n\r\n{"), "{text}");
        assert_eq!(text.contains("\"type\":\"error\""), anthropic, "{text}");
    }

    #[test]
    fn pingoras_bare_answers_are_replaced_by_tollgates() {
        assert_eq!(status_of(b"HTTP/1.1 400 Bad Request\r\n"), Some(400));
        assert_eq!(status_of(b"HTTP/1.0 405 "), Some(405));
        assert_eq!(status_of(b"data: x"), None);
        assert_eq!(status_of(b"HTTP/1.1 4"), None);
        let r = replacement(405, b"CONNECT api.openai.com:443 HTTP/1.1\r\n");
        assert_response(
            &r,
            "HTTP/1.1 405 Method Not Allowed\r\n",
            "method_not_allowed",
            false,
        );
        let r = replacement(400, b"POST /v1/messages HTTP/1.1\r\nx-a: \0");
        assert_response(
            &r,
            "HTTP/1.1 400 Bad Request\r\n",
            "malformed_request",
            true,
        );
    }

    #[test]
    fn the_refusal_is_a_whole_http_response() {
        assert!(refusal(b"", Duration::from_secs(1)).is_empty());
        let r = refusal(b"POST /v1/messages HTTP/1.1\r\n", Duration::from_secs(10));
        assert_response(
            &r,
            "HTTP/1.1 408 Request Timeout\r\n",
            "request_timeout",
            true,
        );
    }
}
