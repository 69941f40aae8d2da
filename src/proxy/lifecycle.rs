//! Start and stop: in-flight tracking and the SIGTERM drain.
//!
//! On SIGTERM tollgate reports not-ready (`/readyz` 503), keeps serving until
//! the requests in flight have finished or `shutdown_grace` has passed, and
//! only then lets pingora close its listeners and stop. Answers still
//! coming when the grace is over are cut by their relays first (the
//! client's stream ends with an error event, the event keeps the usage seen
//! and says `shutdown`), for at most [`CUT_WAIT`]. SIGINT stops at once.
//! Either way every request's usage event reaches the outbox (a request cut
//! short records itself when dropped) and `main` flushes the outbox last.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use prometheus::IntGauge;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

/// How long the relays cut at the end of the grace get to end their
/// answers and record them.
pub const CUT_WAIT: Duration = Duration::from_secs(2);

/// Counts requests in flight and whether the sidecar is draining.
#[derive(Clone)]
pub struct InFlight {
    inner: Arc<InFlightInner>,
}

struct InFlightInner {
    count: AtomicUsize,
    draining: AtomicBool,
    gauge: IntGauge,
    /// Turns true when the grace is over: relays still running cut short.
    cut: AtomicBool,
    /// Wakes the requests waiting in [`InFlight::cut`] when `cut` turns.
    /// (A watch channel cost each waiter a subscription besides the
    /// registration; every request waits here once or twice.)
    cut_wake: Notify,
}

/// Held by a request while it is in flight.
pub struct InFlightGuard {
    inner: Arc<InFlightInner>,
}

impl InFlight {
    pub fn new(gauge: IntGauge) -> InFlight {
        InFlight {
            inner: Arc::new(InFlightInner {
                count: AtomicUsize::new(0),
                draining: AtomicBool::new(false),
                gauge,
                cut: AtomicBool::new(false),
                cut_wake: Notify::new(),
            }),
        }
    }

    /// Marks a request as in flight until the guard drops.
    pub fn enter(&self) -> InFlightGuard {
        self.inner.count.fetch_add(1, Ordering::SeqCst);
        self.inner.gauge.inc();
        InFlightGuard {
            inner: self.inner.clone(),
        }
    }

    pub fn count(&self) -> usize {
        self.inner.count.load(Ordering::SeqCst)
    }

    /// Whether the asking request is the only one in flight (it counts
    /// itself).
    pub fn alone(&self) -> bool {
        self.count() <= 1
    }

    pub fn draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// Resolves when the requests still in flight must end (the grace is over).
    /// Raced with a request's waits in `select!`s that poll it second
    /// (`biased`): only a wait that does not end at once registers here.
    pub async fn cut(&self) {
        let woken = self.inner.cut_wake.notified();
        let mut woken = std::pin::pin!(woken);
        // Registered before the flag is read: a cut in between still wakes it.
        woken.as_mut().enable();
        if !self.cutting() {
            woken.await;
        }
    }

    /// Whether the grace is over (requests still in flight are being cut).
    pub fn cutting(&self) -> bool {
        self.inner.cut.load(Ordering::SeqCst)
    }

    fn cut_all(&self) {
        self.inner.cut.store(true, Ordering::SeqCst);
        self.inner.cut_wake.notify_waiters();
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.inner.count.fetch_sub(1, Ordering::SeqCst);
        self.inner.gauge.dec();
    }
}

/// The shutdown signal handler given to pingora's `Server::run`.
pub struct Shutdown {
    pub in_flight: InFlight,
    pub grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Shutdown {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; waiting forever");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping now");
                ShutdownSignal::FastShutdown
            }
            _ = term.recv() => {
                self.in_flight.start_draining();
                let deadline = Instant::now() + self.grace;
                tracing::info!(in_flight = self.in_flight.count(), grace = ?self.grace, "SIGTERM: draining");
                loop {
                    if self.in_flight.count() == 0 {
                        tracing::info!("drained");
                        break;
                    }
                    if Instant::now() >= deadline {
                        tracing::warn!(in_flight = self.in_flight.count(), "grace period over; cutting the remaining requests");
                        self.in_flight.cut_all();
                        let cut_deadline = Instant::now() + CUT_WAIT;
                        while self.in_flight.count() > 0 && Instant::now() < cut_deadline {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                        _ = int.recv() => return ShutdownSignal::FastShutdown,
                    }
                }
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}
