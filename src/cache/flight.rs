//! Requests in flight that identical requests wait on (coalescing).
//!
//! The first request for a key leads: it calls the provider and publishes
//! what it gets: the response head, each body chunk as it arrives, and the
//! outcome. Followers with the same key wait on it instead of calling the
//! provider: a stream follower relays the chunks live (from the first one,
//! however late it joined), a non-stream follower takes the outcome.
//!
//! Chunks are kept in a singly linked list of `Arc` nodes: the flight holds
//! the head (so a late follower starts at the beginning) and each follower
//! its own cursor, so a chunk is freed as soon as nobody can still read it.
//! Once more than `max_bytes` has streamed the flight lets go of the head
//! and takes no new followers, so memory stays bounded by the slowest
//! follower's lag rather than by the response.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::watch;

use super::key::Key;

/// How much of a stream a flight keeps for followers that join late (they
/// replay it from the first chunk). Beyond it the flight takes no new
/// followers and keeps nothing but what current followers still have to
/// read, so a long stream is never held whole.
pub const REPLAY_BYTES: u64 = 1 << 20;
use super::store::EntryMeta;

/// The upstream response head, as the leader got it.
#[derive(Clone, Debug)]
pub struct Head {
    pub status: u16,
    /// The provider's headers (framing and hop-by-hop already removed by the reader).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// `text/event-stream`: chunks follow.
    pub sse: bool,
}

/// How a flight ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// A complete, successful answer. `message` is the whole message (for
    /// non-stream followers and re-synthesis); `None` when it could not be
    /// assembled (too large, unknown content), in which case a follower that
    /// needs it calls the provider itself.
    Done {
        message: Option<Bytes>,
        meta: EntryMeta,
    },
    /// The provider answered with an error status: the same for every waiter.
    ErrorResponse { head: Head, body: Bytes },
    /// The answer broke off (cut, stall, mid-stream error, budget cut at
    /// `message_start`). `tail` is what the leader's client got after the
    /// last chunk (an SSE `error` event); `kind` / `message` describe it for
    /// non-stream followers, `status` is the HTTP status for them.
    Failed {
        status: u16,
        kind: &'static str,
        message: String,
        tail: Bytes,
    },
    /// No answer came (the leader was refused before calling the provider,
    /// or could not reach it): followers go on by themselves.
    Abandoned,
}

struct Node {
    chunk: Bytes,
    next: OnceLock<Arc<Node>>,
}

impl Drop for Node {
    /// Unlinks iteratively: a long stream must not recurse once per chunk.
    fn drop(&mut self) {
        let mut next = self.next.take();
        while let Some(node) = next {
            match Arc::try_unwrap(node) {
                Ok(mut node) => next = node.next.take(),
                Err(_) => break,
            }
        }
    }
}

#[derive(Default)]
struct Inner {
    head: Option<Head>,
    /// The sentinel before the first chunk; `None` once the flight is too
    /// big to take followers.
    first: Option<Arc<Node>>,
    outcome: Option<Outcome>,
    bytes: u64,
}

/// One request in flight.
pub struct Flight {
    inner: Mutex<Inner>,
    /// The leader's end of the list (only the leader appends).
    tail: Mutex<Arc<Node>>,
    /// Bumped on every change (head, chunk, outcome).
    changed: watch::Sender<u64>,
    followers: AtomicUsize,
    max_bytes: u64,
}

impl Flight {
    fn new(max_bytes: u64) -> Flight {
        let sentinel = Arc::new(Node {
            chunk: Bytes::new(),
            next: OnceLock::new(),
        });
        Flight {
            inner: Mutex::new(Inner {
                first: Some(sentinel.clone()),
                ..Inner::default()
            }),
            tail: Mutex::new(sentinel),
            changed: watch::channel(0).0,
            followers: AtomicUsize::new(0),
            max_bytes,
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Followers currently waiting on or reading this flight.
    pub fn followers(&self) -> usize {
        self.followers.load(Ordering::Acquire)
    }
}

/// The flights by key.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<Key, Arc<Flight>>>,
}

/// What joining a key made of this request.
pub enum Role {
    Leader(Leader),
    Follower(Follower),
    /// The flight has just finished (its answer is being stored): here it is.
    Done(Outcome),
}

impl Flights {
    /// Leads the flight for `key`, or follows the one already in flight.
    /// A flight that no longer takes followers is not followed: the request
    /// goes on alone (`None`).
    pub fn join(self: &Arc<Self>, key: Key, max_bytes: u64) -> Option<Role> {
        let Ok(mut map) = self.map.lock() else {
            return None;
        };
        if let Some(flight) = map.get(&key) {
            let inner = flight.inner.lock().ok()?;
            if let Some(outcome) = &inner.outcome {
                return Some(Role::Done(outcome.clone()));
            }
            let cursor = inner.first.clone()?;
            drop(inner);
            flight.followers.fetch_add(1, Ordering::AcqRel);
            return Some(Role::Follower(Follower {
                flight: flight.clone(),
                cursor,
                rx: flight.changed.subscribe(),
            }));
        }
        let flight = Arc::new(Flight::new(max_bytes));
        map.insert(key, flight.clone());
        Some(Role::Leader(Leader {
            flights: self.clone(),
            key,
            flight,
            ended: false,
        }))
    }

    /// Flights in progress.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether none is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remove(&self, key: &Key, flight: &Arc<Flight>) {
        if let Ok(mut map) = self.map.lock() {
            if map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
                map.remove(key);
            }
        }
    }
}

/// The leading request's handle. Dropping it without an outcome ends the
/// flight as [`Outcome::Abandoned`] (before the head) or `Failed` (after).
pub struct Leader {
    flights: Arc<Flights>,
    key: Key,
    flight: Arc<Flight>,
    ended: bool,
}

impl Leader {
    /// Whether anyone is following (the leader keeps reading the provider
    /// for them after its own client has gone).
    pub fn has_followers(&self) -> bool {
        self.flight.followers() > 0
    }

    /// Publishes the upstream response head.
    pub fn head(&self, head: Head) {
        if let Ok(mut inner) = self.flight.inner.lock() {
            inner.head = Some(head);
        }
        self.flight.bump();
    }

    /// Publishes one upstream body chunk (stream flights).
    pub fn chunk(&self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        let len = chunk.len() as u64;
        let node = Arc::new(Node {
            chunk,
            next: OnceLock::new(),
        });
        if let Ok(mut tail) = self.flight.tail.lock() {
            let _ = tail.next.set(node.clone());
            *tail = node;
        }
        if let Ok(mut inner) = self.flight.inner.lock() {
            inner.bytes += len;
            if inner.bytes > self.flight.max_bytes {
                // Too big to replay from the start: no new followers.
                inner.first = None;
            }
        }
        self.flight.bump();
    }

    /// Ends the flight: waiters get `outcome`, later requests no longer find it.
    pub fn finish(mut self, outcome: Outcome) {
        self.end(outcome, true);
    }

    /// Ends the flight but keeps it findable until the returned [`Release`]
    /// drops: requests arriving while its answer is being stored get the
    /// outcome instead of calling the provider again.
    pub fn finish_held(mut self, outcome: Outcome) -> Release {
        self.end(outcome, false);
        Release {
            flights: self.flights.clone(),
            key: self.key,
            flight: self.flight.clone(),
        }
    }

    fn end(&mut self, outcome: Outcome, remove: bool) {
        if self.ended {
            return;
        }
        self.ended = true;
        if remove {
            self.flights.remove(&self.key, &self.flight);
        }
        if let Ok(mut inner) = self.flight.inner.lock() {
            inner.outcome = Some(outcome);
            inner.first = None;
        }
        self.flight.bump();
    }
}

/// Keeps a finished flight findable; dropping it lets go.
pub struct Release {
    flights: Arc<Flights>,
    key: Key,
    flight: Arc<Flight>,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.flights.remove(&self.key, &self.flight);
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let started = self
            .flight
            .inner
            .lock()
            .map(|i| i.head.is_some())
            .unwrap_or(false);
        let outcome = if started {
            Outcome::Failed {
                status: 502,
                kind: "upstream_protocol",
                message: "the coalesced request ended without an answer (tollgate)".into(),
                tail: Bytes::new(),
            }
        } else {
            Outcome::Abandoned
        };
        self.end(outcome, true);
    }
}

/// A following request's handle: reads the leader's chunks from the first.
pub struct Follower {
    flight: Arc<Flight>,
    cursor: Arc<Node>,
    rx: watch::Receiver<u64>,
}

/// What a follower waits for next.
pub enum Event {
    /// The response head (at most once, before any chunk).
    Head(Head),
    Chunk(Bytes),
    End(Outcome),
}

impl Follower {
    /// Waits for the head or the outcome, whichever comes first.
    pub async fn head(&mut self) -> Result<Head, Outcome> {
        loop {
            {
                let inner = match self.flight.inner.lock() {
                    Ok(i) => i,
                    Err(_) => return Err(Outcome::Abandoned),
                };
                if let Some(head) = &inner.head {
                    return Ok(head.clone());
                }
                if let Some(outcome) = &inner.outcome {
                    return Err(outcome.clone());
                }
            }
            if self.rx.changed().await.is_err() {
                return Err(Outcome::Abandoned);
            }
        }
    }

    /// The next chunk, or the outcome once every chunk has been read.
    pub async fn next(&mut self) -> Result<Bytes, Outcome> {
        loop {
            if let Some(next) = self.cursor.next.get().cloned() {
                self.cursor = next;
                return Ok(self.cursor.chunk.clone());
            }
            {
                let outcome = self
                    .flight
                    .inner
                    .lock()
                    .ok()
                    .and_then(|i| i.outcome.clone());
                if let Some(outcome) = outcome {
                    // The outcome is set after the last chunk: check once more.
                    if let Some(next) = self.cursor.next.get().cloned() {
                        self.cursor = next;
                        return Ok(self.cursor.chunk.clone());
                    }
                    return Err(outcome);
                }
            }
            if self.rx.changed().await.is_err() {
                return Err(Outcome::Abandoned);
            }
        }
    }

    /// Waits for the outcome (skipping chunks).
    pub async fn outcome(&mut self) -> Outcome {
        loop {
            if let Some(outcome) = self
                .flight
                .inner
                .lock()
                .ok()
                .and_then(|i| i.outcome.clone())
            {
                return outcome;
            }
            if self.rx.changed().await.is_err() {
                return Outcome::Abandoned;
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.flight.followers.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::Usage;

    fn meta() -> EntryMeta {
        EntryMeta {
            account: "a".into(),
            provider: "p".into(),
            model: "m".into(),
            created_us: 0,
            usage: Usage::default(),
            cost_nusd: 0,
            upstream_request_id: None,
        }
    }

    fn head() -> Head {
        Head {
            status: 200,
            headers: Vec::new(),
            sse: true,
        }
    }

    #[tokio::test]
    async fn followers_read_every_chunk_live_and_late() {
        let flights = Arc::new(Flights::default());
        let key = Key([7; 32]);
        let Some(Role::Leader(leader)) = flights.join(key, 1 << 20) else {
            panic!("first joiner leads");
        };
        let Some(Role::Follower(mut early)) = flights.join(key, 1 << 20) else {
            panic!("second joiner follows");
        };
        assert!(leader.has_followers());
        let reader = tokio::spawn(async move {
            let h = early.head().await.ok().map(|h| h.status);
            let mut got = Vec::new();
            let end = loop {
                match early.next().await {
                    Ok(c) => got.push(c),
                    Err(o) => break o,
                }
            };
            (h, got, matches!(end, Outcome::Done { .. }))
        });
        leader.head(head());
        leader.chunk(Bytes::from_static(b"a"));
        tokio::task::yield_now().await;
        leader.chunk(Bytes::from_static(b"b"));
        // A late follower still starts from the first chunk.
        let Some(Role::Follower(mut late)) = flights.join(key, 1 << 20) else {
            panic!("late joiner follows");
        };
        leader.chunk(Bytes::from_static(b"c"));
        leader.finish(Outcome::Done {
            message: None,
            meta: meta(),
        });
        let (h, got, done) = reader.await.unwrap();
        assert_eq!(h, Some(200));
        assert_eq!(got, vec!["a", "b", "c"]);
        assert!(done);
        let mut late_got = Vec::new();
        while let Ok(c) = late.next().await {
            late_got.push(c);
        }
        assert_eq!(late_got, vec!["a", "b", "c"]);
        // Finished: the key is free again.
        assert!(flights.is_empty());
        assert!(matches!(flights.join(key, 1), Some(Role::Leader(_))));
    }

    #[tokio::test]
    async fn a_dropped_leader_abandons_or_fails() {
        let flights = Arc::new(Flights::default());
        let key = Key([1; 32]);
        let Some(Role::Leader(leader)) = flights.join(key, 1 << 20) else {
            panic!()
        };
        let Some(Role::Follower(mut f)) = flights.join(key, 1 << 20) else {
            panic!()
        };
        drop(leader);
        assert!(matches!(f.head().await, Err(Outcome::Abandoned)));
        let Some(Role::Leader(leader)) = flights.join(key, 1 << 20) else {
            panic!()
        };
        let Some(Role::Follower(mut f)) = flights.join(key, 1 << 20) else {
            panic!()
        };
        leader.head(head());
        drop(leader);
        assert!(f.head().await.is_ok());
        assert!(matches!(f.next().await, Err(Outcome::Failed { .. })));
    }

    #[tokio::test]
    async fn an_oversized_flight_takes_no_new_followers() {
        let flights = Arc::new(Flights::default());
        let key = Key([2; 32]);
        let Some(Role::Leader(leader)) = flights.join(key, 4) else {
            panic!()
        };
        let Some(Role::Follower(mut f)) = flights.join(key, 4) else {
            panic!()
        };
        leader.head(head());
        leader.chunk(Bytes::from_static(b"12345"));
        assert!(flights.join(key, 4).is_none());
        leader.chunk(Bytes::from_static(b"6"));
        leader.finish(Outcome::Abandoned);
        assert_eq!(f.next().await.ok(), Some(Bytes::from_static(b"12345")));
        assert_eq!(f.next().await.ok(), Some(Bytes::from_static(b"6")));
        assert!(f.next().await.is_err());
    }

    #[test]
    fn a_long_list_drops_without_recursion() {
        let flight = Flight::new(u64::MAX);
        let flights = Arc::new(Flights::default());
        let leader = Leader {
            flights,
            key: Key([0; 32]),
            flight: Arc::new(flight),
            ended: false,
        };
        for _ in 0..200_000 {
            leader.chunk(Bytes::from_static(b"x"));
        }
        drop(leader);
    }
}
