//! NG replies kept by cookie, so a retransmitted request is answered with the very same bytes
//! and is not executed twice (a second `offer` execution would allocate new ports).
//!
//! Bounded in age (entries older than the TTL are dropped) and in total bytes (oldest first).
//! Insertion times only grow, so a FIFO of (time, cookie) orders expiry without a scan.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

struct Entry {
    request_digest: u64,
    reply: Vec<u8>,
    inserted: Instant,
}

/// What the cache knows about a cookie.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup<'a> {
    /// Same cookie, same request: send these bytes again.
    Hit(&'a [u8]),
    /// Same cookie but a different request body (another client reusing cookies): execute.
    CookieReused,
    /// Nothing cached.
    Miss,
}

/// Reply cache bounded by age and bytes. No `Debug`: replies hold SDP.
pub(crate) struct ReplyCache {
    ttl: Duration,
    max_bytes: usize,
    bytes: usize,
    entries: HashMap<Vec<u8>, Entry>,
    order: VecDeque<(Instant, Vec<u8>)>,
}

/// Digest of a request body; the cache stores this rather than the body to save memory.
pub(crate) fn digest(body: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    body.hash(&mut h);
    h.finish()
}

impl ReplyCache {
    pub(crate) fn new(ttl: Duration, max_bytes: usize) -> Self {
        ReplyCache {
            ttl,
            max_bytes,
            bytes: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn lookup(
        &mut self,
        now: Instant,
        cookie: &[u8],
        request_digest: u64,
    ) -> Lookup<'_> {
        self.expire(now);
        match self.entries.get(cookie) {
            Some(e) if e.request_digest == request_digest => Lookup::Hit(&e.reply),
            Some(_) => Lookup::CookieReused,
            None => Lookup::Miss,
        }
    }

    pub(crate) fn insert(
        &mut self,
        now: Instant,
        cookie: &[u8],
        request_digest: u64,
        reply: Vec<u8>,
    ) {
        let cost = cookie.len() + reply.len();
        if cost > self.max_bytes {
            return;
        }
        if let Some(old) = self.entries.remove(cookie) {
            self.bytes -= cookie.len() + old.reply.len();
        }
        self.bytes += cost;
        self.entries.insert(
            cookie.to_vec(),
            Entry {
                request_digest,
                reply,
                inserted: now,
            },
        );
        self.order.push_back((now, cookie.to_vec()));
        while self.bytes > self.max_bytes {
            if !self.pop_oldest() {
                break;
            }
        }
    }

    /// Drops entries older than the TTL.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some((inserted, _)) = self.order.front() {
            if now.saturating_duration_since(*inserted) < self.ttl {
                break;
            }
            self.pop_oldest();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    fn pop_oldest(&mut self) -> bool {
        let Some((inserted, cookie)) = self.order.pop_front() else {
            return false;
        };
        // A cookie re-inserted later has a newer entry: only the matching one goes.
        if self
            .entries
            .get(&cookie)
            .is_some_and(|e| e.inserted == inserted)
        {
            if let Some(old) = self.entries.remove(&cookie) {
                self.bytes -= cookie.len() + old.reply.len();
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_ttl_and_bytes_are_bounded() {
        let t0 = Instant::now();
        let mut c = ReplyCache::new(Duration::from_secs(10), 100);
        c.insert(t0, b"a", 1, vec![0; 40]);
        assert_eq!(c.lookup(t0, b"a", 1), Lookup::Hit(&[0; 40]));
        assert_eq!(c.lookup(t0, b"a", 2), Lookup::CookieReused);
        c.insert(t0 + Duration::from_secs(1), b"b", 1, vec![1; 40]);
        c.insert(t0 + Duration::from_secs(2), b"c", 1, vec![2; 40]);
        // 3 × 41 bytes > 100: the oldest went.
        assert_eq!(c.lookup(t0 + Duration::from_secs(2), b"a", 1), Lookup::Miss);
        assert!(c.bytes() <= 100);
        assert_eq!(
            c.lookup(t0 + Duration::from_secs(11), b"b", 1),
            Lookup::Miss
        );
        assert!(matches!(
            c.lookup(t0 + Duration::from_secs(11), b"c", 1),
            Lookup::Hit(_)
        ));
        assert_eq!(
            c.lookup(t0 + Duration::from_secs(12), b"c", 1),
            Lookup::Miss
        );
        assert_eq!(c.len(), 0);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn reinserted_cookie_is_not_evicted_by_its_stale_fifo_entry() {
        let t0 = Instant::now();
        let mut c = ReplyCache::new(Duration::from_secs(10), 1000);
        c.insert(t0, b"a", 1, vec![0; 10]);
        c.insert(t0 + Duration::from_secs(5), b"a", 2, vec![1; 10]);
        assert!(matches!(
            c.lookup(t0 + Duration::from_secs(11), b"a", 2),
            Lookup::Hit(_)
        ));
        assert_eq!(c.bytes(), 11);
    }
}
