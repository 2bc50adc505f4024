//! Who gets a connection slot, and who gives one up.
//!
//! A server has `max_connections` slots. Rules, so that peers that hold
//! slots without doing anything cannot keep a real producer out:
//!
//! * At most `max_pending` connections may be *pending* (not yet past their
//!   handshake); a new one beyond that closes the oldest pending one, if
//!   that one has been pending for [`PENDING_GRACE`] (else the new one is
//!   refused). A real producer sends its hello at once, so it is through
//!   long before; peers that open connections and say nothing are pushed
//!   out by newcomers, and a burst of real producers is not.
//! * When every slot is taken, a new connection takes the slot of the
//!   connection that has made no progress (no whole frame from a producer,
//!   no write to a viewer) for the longest, if that is at least
//!   `idle_grace`; otherwise it is refused.
//! * Pending connections never hold more than `max_pending` slots, so the
//!   rest are kept for peers that get through the handshake (with the
//!   token, when one is set).
//! * A peer (IP address) whose token was wrong several times in a row is
//!   refused at once for a while, doubling up to a minute, before its next
//!   guess is even read ([`Backoff`]).
//!
//! Each admitted connection holds a [`Slot`]; the slot tells its
//! connection when it has been evicted ([`Slot::evicted`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Notify;
use tokio::time::Instant;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a pending connection is safe from being closed for a newcomer:
/// far longer than a real producer takes to send its hello, even on a
/// loaded machine.
pub(crate) const PENDING_GRACE: Duration = Duration::from_secs(1);

/// What a connection is, for admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Not yet past its handshake.
    Pending,
    /// A producer past its hello.
    Producer,
    /// A viewer past its greeting.
    Viewer,
}

#[derive(Default)]
struct Kill {
    fired: AtomicBool,
    notify: Notify,
}

struct Entry {
    kind: Kind,
    since: Instant,
    progress: Instant,
    kill: Arc<Kill>,
}

#[derive(Default)]
struct Slots {
    next_id: u64,
    map: HashMap<u64, Entry>,
    pending: usize,
}

impl Slots {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.map.remove(&id)?;
        if e.kind == Kind::Pending {
            self.pending -= 1;
        }
        Some(e)
    }

    /// Evicts `id`: its slot is free now, its connection told to close.
    fn evict(&mut self, id: u64) -> Option<Kind> {
        let e = self.remove(id)?;
        e.kill.fired.store(true, Ordering::Release);
        e.kill.notify.notify_waiters();
        e.kill.notify.notify_one();
        Some(e.kind)
    }

    /// The oldest pending connection, if pending for the grace.
    fn oldest_pending(&self, now: Instant) -> Option<u64> {
        self.map
            .iter()
            .filter(|(_, e)| {
                e.kind == Kind::Pending && now.saturating_duration_since(e.since) >= PENDING_GRACE
            })
            .min_by_key(|(id, e)| (e.since, **id))
            .map(|(id, _)| *id)
    }

    /// The connection idle longest, when idle at least `grace` (pending
    /// connections first: they have done nothing yet).
    fn idlest(&self, now: Instant, grace: Duration) -> Option<u64> {
        if let Some(id) = self.oldest_pending(now) {
            return Some(id);
        }
        self.map
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.progress) >= grace)
            .min_by_key(|(id, e)| (e.progress, **id))
            .map(|(id, _)| *id)
    }
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Every slot is taken by connections that are making progress.
    Busy,
    /// This peer's token was wrong too often; retry after this long.
    Backoff(Duration),
}

/// What [`Admission::admit`] did besides admitting.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Evicted {
    /// A pending connection closed to keep pending ones under their cap.
    pub pending: bool,
    /// A connection closed to free a slot, and its kind.
    pub idle: Option<Kind>,
}

/// The slots of a server.
pub(crate) struct Admission {
    max_connections: usize,
    max_pending: usize,
    idle_grace: Duration,
    slots: Mutex<Slots>,
    backoff: Mutex<Backoff>,
}

impl Admission {
    pub(crate) fn new(max_connections: usize, max_pending: usize, idle_grace: Duration) -> Self {
        let max_connections = max_connections.max(2);
        Admission {
            max_connections,
            max_pending: max_pending.clamp(1, max_connections - 1),
            idle_grace,
            slots: Mutex::default(),
            backoff: Mutex::default(),
        }
    }

    /// Admits a new connection from `ip` as pending, evicting as the rules
    /// say, or refuses it.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<(Slot, Evicted), Refused> {
        let now = Instant::now();
        if let Some(wait) = lock(&self.backoff).blocked(ip, now) {
            return Err(Refused::Backoff(wait));
        }
        let mut s = lock(&self.slots);
        let mut evicted = Evicted::default();
        if s.pending >= self.max_pending {
            match s.oldest_pending(now) {
                Some(id) => {
                    s.evict(id);
                    evicted.pending = true;
                }
                None => return Err(Refused::Busy),
            }
        }
        if s.map.len() >= self.max_connections {
            match s.idlest(now, self.idle_grace) {
                Some(id) => evicted.idle = s.evict(id),
                None => return Err(Refused::Busy),
            }
        }
        let id = s.next_id;
        s.next_id += 1;
        let kill = Arc::new(Kill::default());
        s.map.insert(
            id,
            Entry {
                kind: Kind::Pending,
                since: now,
                progress: now,
                kill: kill.clone(),
            },
        );
        s.pending += 1;
        Ok((
            Slot {
                id,
                admission: self.clone(),
                kill,
            },
            evicted,
        ))
    }

    /// Connections holding a slot now, pending ones among them.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let s = lock(&self.slots);
        (s.map.len(), s.pending)
    }

    /// A wrong token from `ip`.
    pub(crate) fn failed(&self, ip: IpAddr) {
        lock(&self.backoff).failed(ip, Instant::now());
    }

    /// A right token from `ip`: its failures are forgotten.
    pub(crate) fn succeeded(&self, ip: IpAddr) {
        lock(&self.backoff).map.remove(&ip);
    }
}

/// A connection's slot; given back when dropped.
pub(crate) struct Slot {
    id: u64,
    admission: Arc<Admission>,
    kill: Arc<Kill>,
}

impl Slot {
    /// The connection got through its handshake as `kind`.
    pub(crate) fn promote(&self, kind: Kind) {
        let mut s = lock(&self.admission.slots);
        let s = &mut *s;
        if let Some(e) = s.map.get_mut(&self.id) {
            if e.kind == Kind::Pending && kind != Kind::Pending {
                s.pending -= 1;
            }
            e.kind = kind;
            e.progress = Instant::now();
        }
    }

    /// The connection made progress (a whole frame read, a write done).
    pub(crate) fn progress(&self) {
        if let Some(e) = lock(&self.admission.slots).map.get_mut(&self.id) {
            e.progress = Instant::now();
        }
    }

    /// Completes when the slot was given to another connection.
    pub(crate) async fn evicted(&self) {
        loop {
            let notified = self.kill.notify.notified();
            if self.kill.fired.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.admission.slots).remove(self.id);
    }
}

/// Peers whose tokens were wrong: how many times, and until when they are
/// refused. Bounded: beyond [`Backoff::MAX_PEERS`] the stalest are
/// forgotten.
#[derive(Default)]
struct Backoff {
    map: HashMap<IpAddr, Failures>,
}

struct Failures {
    count: u32,
    until: Instant,
    last: Instant,
}

impl Backoff {
    /// Wrong tokens in a row a peer may present before it must wait.
    const FREE_TRIES: u32 = 3;
    /// Longest wait.
    const MAX_WAIT: Duration = Duration::from_secs(60);
    /// Peers remembered at most.
    const MAX_PEERS: usize = 4096;

    fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let f = self.map.get(&ip)?;
        (f.until > now).then(|| f.until - now)
    }

    fn failed(&mut self, ip: IpAddr, now: Instant) {
        if self.map.len() >= Self::MAX_PEERS && !self.map.contains_key(&ip) {
            if let Some(stalest) = self.map.iter().min_by_key(|(_, f)| f.last).map(|(i, _)| *i) {
                self.map.remove(&stalest);
            }
        }
        let f = self.map.entry(ip).or_insert(Failures {
            count: 0,
            until: now,
            last: now,
        });
        f.count = f.count.saturating_add(1);
        f.last = now;
        if f.count >= Self::FREE_TRIES {
            let doublings = (f.count - Self::FREE_TRIES).min(6);
            f.until = now + Duration::from_secs(1 << doublings).min(Self::MAX_WAIT);
        }
    }
}

/// Whether `got` is the `expected` token, in time that depends on neither
/// their contents nor their lengths: both are hashed, and the digests
/// compared in constant time.
pub(crate) fn token_ok(expected: &str, got: Option<&str>) -> bool {
    let got = got.unwrap_or("");
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(got.as_bytes());
    bool::from(a.ct_eq(&b)) && !expected.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn tokens_compare_by_content_only() {
        assert!(token_ok("secret", Some("secret")));
        assert!(!token_ok("secret", Some("secreT")));
        assert!(!token_ok("secret", Some("secret-and-more")));
        assert!(!token_ok("secret", None));
        assert!(!token_ok("", Some("")));
    }

    #[tokio::test(start_paused = true)]
    async fn pending_connections_make_room_for_new_ones_oldest_first() {
        let a = Arc::new(Admission::new(10, 2, Duration::from_secs(5)));
        let (first, _) = a.admit(IP).unwrap();
        let (_second, _) = a.admit(IP).unwrap();
        // Both are new: a third waits its turn.
        assert_eq!(a.admit(IP).err(), Some(Refused::Busy));
        tokio::time::advance(PENDING_GRACE).await;
        let (_third, ev) = a.admit(IP).unwrap();
        assert!(ev.pending);
        // The first was told, and its slot is free.
        tokio::time::timeout(Duration::from_millis(1), first.evicted())
            .await
            .expect("evicted");
        assert_eq!(a.counts(), (2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_server_evicts_the_idlest_connection_only_after_the_grace() {
        let a = Arc::new(Admission::new(3, 1, Duration::from_secs(5)));
        let mut held = Vec::new();
        for _ in 0..3 {
            let (s, _) = a.admit(IP).unwrap();
            s.promote(Kind::Producer);
            held.push(s);
        }
        assert_eq!(a.admit(IP).err(), Some(Refused::Busy));
        tokio::time::advance(Duration::from_secs(6)).await;
        held[0].progress();
        held[2].progress();
        let (_new, ev) = a.admit(IP).unwrap();
        assert_eq!(ev.idle, Some(Kind::Producer));
        tokio::time::timeout(Duration::from_millis(1), held[1].evicted())
            .await
            .expect("the idle one was evicted");
    }

    #[tokio::test(start_paused = true)]
    async fn wrong_tokens_back_off_and_a_right_one_forgets() {
        let a = Arc::new(Admission::new(10, 5, Duration::from_secs(5)));
        for _ in 0..Backoff::FREE_TRIES - 1 {
            a.failed(IP);
            assert!(a.admit(IP).is_ok());
        }
        a.failed(IP);
        assert!(matches!(a.admit(IP), Err(Refused::Backoff(_))));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(a.admit(IP).is_ok());
        a.failed(IP);
        // Doubled: two seconds now.
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(matches!(a.admit(IP), Err(Refused::Backoff(_))));
        a.succeeded(IP);
        assert!(a.admit(IP).is_ok());
    }
}
