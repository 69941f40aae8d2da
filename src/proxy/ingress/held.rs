//! One response write held back to go out with the next, in one system
//! call: a streamed response's head with its first event, and its last
//! events with the chunked terminator.
//!
//! pingora 0.9 writes and flushes a response head without a
//! `content-length` on its own ("the response could be generated in real
//! time"), and the chunked terminator after the last chunk on its own. Each
//! of those writes wakes the client for a part it cannot use alone (a head
//! without its first event; events without the end). On a machine where the
//! client shares the proxy's CPU, the woken client also takes that CPU
//! from the proxy until it has read the part, in the middle of the proxy's
//! work on what follows.
//!
//! [`HeldWrite::arm`] holds the connection's next write (and skips the one
//! flush that follows it); the write after that sends both with one
//! `writev`, and any later flush or shutdown sends it alone. So a held write
//! is never lost, only delayed until the caller's next write: a caller arms
//! only when that write follows without waiting on anything.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;

/// A connection's held write; see the module docs.
#[derive(Debug, Default)]
pub struct HeldWrite {
    /// Set (through a shared reference, by the relay) to hold the next write.
    armed: AtomicBool,
    held: Vec<u8>,
    /// How much of `held` is out.
    sent: usize,
    /// The flush right after the held write is skipped.
    skip_flush: bool,
}

impl HeldWrite {
    /// Holds the next write until the one after it.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::Relaxed);
    }

    /// Undoes an [`arm`](Self::arm) no write has used yet.
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::Relaxed);
    }

    /// Whether writes must go through [`poll_write`](Self::poll_write).
    pub fn active(&self) -> bool {
        !self.held.is_empty() || self.armed.load(Ordering::Relaxed)
    }

    /// A write while [`active`](Self::active): the armed write is kept (and
    /// reported written); the next one goes out after what is held, in one
    /// vectored write. Returns how much of `bufs` was written.
    pub fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut W,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.armed.swap(false, Ordering::Relaxed) {
            // Kept, after anything already held (a head whose first event
            // was withheld, then the last write): all wait for the next.
            let n = bufs.iter().map(|b| b.len()).sum();
            self.held.reserve_exact(n);
            for b in bufs {
                self.held.extend_from_slice(b);
            }
            self.skip_flush = true;
            return Poll::Ready(Ok(n));
        }
        while self.sent < self.held.len() {
            let rest = self.held.len() - self.sent;
            let mut all = Vec::with_capacity(bufs.len() + 1);
            all.push(io::IoSlice::new(&self.held[self.sent..]));
            all.extend(bufs.iter().map(|b| io::IoSlice::new(b)));
            let n = ready!(Pin::new(&mut *inner).poll_write_vectored(cx, &all))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n < rest {
                self.sent += n;
                continue;
            }
            self.clear();
            if n > rest {
                return Poll::Ready(Ok(n - rest));
            }
        }
        self.clear();
        Pin::new(inner).poll_write_vectored(cx, bufs)
    }

    /// Whether this flush is the one after the held write, to be skipped.
    pub fn skips_flush(&mut self) -> bool {
        std::mem::take(&mut self.skip_flush)
    }

    /// Writes out whatever is held (before a flush or a shutdown).
    pub fn poll_release<W: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        self.skip_flush = false;
        while self.sent < self.held.len() {
            match ready!(Pin::new(&mut *inner).poll_write(cx, &self.held[self.sent..]))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => self.sent += n,
            }
        }
        self.clear();
        Poll::Ready(Ok(()))
    }

    /// Nothing held; the buffer is freed (a kept-alive connection keeps no
    /// copy of its last events).
    fn clear(&mut self) {
        self.held = Vec::new();
        self.sent = 0;
        self.skip_flush = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `room` bytes per call, `Pending` once
    /// after every write when `stall`, and records each call's bytes.
    #[derive(Default)]
    struct Socket {
        calls: Vec<Vec<u8>>,
        room: usize,
        stall: bool,
        stalled: bool,
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            if self.stall && !self.stalled {
                self.stalled = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.stalled = false;
            let mut out = Vec::new();
            for b in bufs {
                out.extend_from_slice(b);
            }
            out.truncate(self.room);
            let n = out.len();
            self.calls.push(out);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn socket(room: usize) -> Socket {
        Socket {
            room,
            ..Socket::default()
        }
    }

    /// Writes all of `buf` as `write_all` would, through `held` when active.
    fn write_all(held: &mut HeldWrite, sock: &mut Socket, mut buf: &[u8]) {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        while !buf.is_empty() {
            let poll = if held.active() {
                held.poll_write(sock, &mut cx, &[io::IoSlice::new(buf)])
            } else {
                Pin::new(&mut *sock).poll_write(&mut cx, buf)
            };
            match poll {
                Poll::Ready(Ok(n)) => buf = &buf[n..],
                Poll::Ready(Err(e)) => panic!("write failed: {e}"),
                Poll::Pending => {}
            }
        }
    }

    fn release(held: &mut HeldWrite, sock: &mut Socket) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            if let Poll::Ready(r) = held.poll_release(sock, &mut cx) {
                return r.expect("release failed");
            }
        }
    }

    #[test]
    fn the_armed_write_goes_out_with_the_next_in_one_call() {
        let (mut held, mut sock) = (HeldWrite::default(), socket(usize::MAX));
        held.arm();
        write_all(&mut held, &mut sock, b"HEAD ");
        assert!(sock.calls.is_empty(), "the armed write is held");
        assert!(held.skips_flush(), "the flush after it is skipped");
        assert!(!held.skips_flush(), "only that one");
        write_all(&mut held, &mut sock, b"first event");
        assert_eq!(sock.calls, vec![b"HEAD first event".to_vec()]);
        assert!(!held.active());
        write_all(&mut held, &mut sock, b"more");
        assert_eq!(sock.calls.len(), 2, "later writes go straight through");
    }

    #[test]
    fn short_and_pending_writes_lose_and_repeat_nothing() {
        for room in [1, 2, 3, 5, 7, 64] {
            for stall in [false, true] {
                let mut sock = Socket {
                    stall,
                    ..socket(room)
                };
                let mut held = HeldWrite::default();
                held.arm();
                write_all(&mut held, &mut sock, b"HEAD ");
                write_all(&mut held, &mut sock, b"first");
                write_all(&mut held, &mut sock, b" then");
                let out: Vec<u8> = sock.calls.concat();
                assert_eq!(out, b"HEAD first then", "room {room}, stall {stall}");
                assert!(!held.active());
            }
        }
    }

    #[test]
    fn a_flush_or_shutdown_after_the_skipped_one_sends_what_is_held() {
        let (mut held, mut sock) = (HeldWrite::default(), socket(3));
        held.arm();
        write_all(&mut held, &mut sock, b"last events");
        assert!(held.skips_flush());
        release(&mut held, &mut sock);
        assert_eq!(sock.calls.concat(), b"last events");
        assert!(!held.active());
        assert!(!held.skips_flush());
    }

    /// A head held, its first event withheld (a budget cut), then the
    /// last write armed: head, last events and terminator leave together,
    /// and nothing is left held for the connection's next response.
    #[test]
    fn armed_again_while_holding_keeps_both_for_the_next_write() {
        let (mut held, mut sock) = (HeldWrite::default(), socket(usize::MAX));
        held.arm();
        write_all(&mut held, &mut sock, b"HEAD ");
        assert!(held.skips_flush());
        held.arm();
        write_all(&mut held, &mut sock, b"error event ");
        assert!(held.skips_flush());
        assert!(sock.calls.is_empty());
        write_all(&mut held, &mut sock, b"0");
        assert_eq!(sock.calls, vec![b"HEAD error event 0".to_vec()]);
        assert!(!held.active());
        assert!(!held.skips_flush());
    }

    #[test]
    fn disarmed_before_any_write_holds_nothing() {
        let (mut held, mut sock) = (HeldWrite::default(), socket(usize::MAX));
        held.arm();
        held.disarm();
        assert!(!held.active());
        write_all(&mut held, &mut sock, b"HEAD");
        assert_eq!(sock.calls, vec![b"HEAD".to_vec()]);
    }
}
