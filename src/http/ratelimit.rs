//! Request rate limits, checked before any work a request could make the daemon do.
//!
//! - Requests are limited with GCRA (`governor`): each key has a bucket of `limit`
//!   requests that refills at `limit` per minute, so a client can burst up to its
//!   limit and then runs at the steady rate; there is no window boundary across which
//!   twice the limit gets through in a moment.
//! - Keys: the source address for anonymous callers and for credentials not yet
//!   verified (IPv4 per address, IPv6 per /64, since one host commonly holds a whole
//!   /64); then, once a credential is known good, the credential *and* its user, so
//!   minting more tokens does not multiply a user's budget.
//! - Memory is bounded: buckets that have refilled are dropped by [`RateLimiter::prune`],
//!   and past [`MAX_KEYS`] addresses new addresses share one overflow bucket.
//! - Failed logins have their own exact sliding window per address
//!   ([`LoginLimiter`]): an attempt is *reserved* before the password is checked and
//!   released only when it succeeds, so concurrent attempts cannot all slip through.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter as Gcra};

/// Most distinct keys kept per kind before new ones share an overflow bucket.
pub const MAX_KEYS: usize = 100_000;

/// What a rate-limit check decided, and the header values that describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again (allowed), or until the next request
    /// can pass (refused; the `Retry-After` value). At least 1.
    pub reset: u64,
}

impl Decision {
    /// The decision that binds the client when two limits apply: a refusal wins,
    /// otherwise the one with less room left.
    pub fn tighter(self, other: Decision) -> Decision {
        match (self.allowed, other.allowed) {
            (false, true) => self,
            (true, false) => other,
            _ if other.remaining < self.remaining => other,
            _ => self,
        }
    }
}

/// The key an address is counted under: IPv4 addresses alone, IPv6 by /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrKey {
    V4(u32),
    V6Net(u64),
    /// Shared by every address once [`MAX_KEYS`] are tracked.
    Overflow,
}

impl AddrKey {
    pub fn of(ip: IpAddr) -> AddrKey {
        match ip {
            IpAddr::V4(v4) => AddrKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrKey::V4(u32::from(v4)),
                None => AddrKey::V6Net((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

type Keyed<K, C> = Gcra<K, DashMapStateStore<K>, C, StateInformationMiddleware>;

struct Bucket<K: Hash + Eq + Clone, C: Clock> {
    gcra: Keyed<K, C>,
    limit: u32,
}

impl<K: Hash + Eq + Clone, C: Clock> Bucket<K, C> {
    fn new(limit: u32, clock: C) -> Self {
        let n = NonZeroU32::new(limit.max(1)).unwrap_or(NonZeroU32::MIN);
        Bucket { gcra: Gcra::dashmap_with_clock(Quota::per_minute(n), clock).with_middleware(), limit: n.get() }
    }

    fn check(&self, key: &K, clock: &C) -> Decision {
        let per_cell = Duration::from_secs(60) / self.limit;
        match self.gcra.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let refill = per_cell * (self.limit - remaining.min(self.limit));
                Decision { allowed: true, limit: self.limit, remaining, reset: ceil_secs(refill) }
            }
            Err(not_until) => Decision {
                allowed: false,
                limit: self.limit,
                remaining: 0,
                reset: ceil_secs(not_until.wait_time_from(clock.now())),
            },
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// Per-address, per-credential and per-user request budgets.
pub struct RateLimiter<C: Clock = DefaultClock> {
    clock: C,
    max_keys: usize,
    addresses: Bucket<AddrKey, C>,
    credentials: Bucket<String, C>,
    users: Bucket<String, C>,
}

impl RateLimiter<DefaultClock> {
    /// `per_credential`: requests a minute for each credential and for each user;
    /// `per_address`: for each address's anonymous or not-yet-verified requests.
    pub fn new(per_credential: u32, per_address: u32) -> Self {
        Self::with_clock(per_credential, per_address, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    pub fn with_clock(per_credential: u32, per_address: u32, clock: C) -> Self {
        RateLimiter {
            max_keys: MAX_KEYS,
            addresses: Bucket::new(per_address, clock.clone()),
            credentials: Bucket::new(per_credential, clock.clone()),
            users: Bucket::new(per_credential, clock.clone()),
            clock,
        }
    }

    /// Counts one request against the source address.
    pub fn check_address(&self, ip: IpAddr) -> Decision {
        let mut key = AddrKey::of(ip);
        if self.addresses.gcra.len() >= self.max_keys {
            self.addresses.gcra.retain_recent();
            if self.addresses.gcra.len() >= self.max_keys {
                key = AddrKey::Overflow;
            }
        }
        self.addresses.check(&key, &self.clock)
    }

    /// Counts one request against a verified credential and against its user.
    pub fn check_principal(&self, credential_id: &str, user_id: &str) -> Decision {
        let cred = self.credentials.check(&credential_id.to_string(), &self.clock);
        if !cred.allowed {
            return cred;
        }
        cred.tighter(self.users.check(&user_id.to_string(), &self.clock))
    }

    /// Drops buckets that have refilled completely (they hold nothing a new bucket
    /// would not), and gives the memory back.
    pub fn prune(&self) {
        for_each_bucket(self, |g| {
            g.retain_recent();
            g.shrink_to_fit();
        });
    }

    /// Keys held, all kinds together (for tests and metrics).
    pub fn len(&self) -> usize {
        self.addresses.gcra.len() + self.credentials.gcra.len() + self.users.gcra.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn for_each_bucket<C: Clock>(l: &RateLimiter<C>, f: impl Fn(&dyn Shrink)) {
    f(&l.addresses.gcra);
    f(&l.credentials.gcra);
    f(&l.users.gcra);
}

/// The housekeeping calls of a keyed limiter, whatever its key type.
trait Shrink {
    fn retain_recent(&self);
    fn shrink_to_fit(&self);
}

impl<K: Hash + Eq + Clone, C: Clock> Shrink for Keyed<K, C> {
    fn retain_recent(&self) {
        Gcra::retain_recent(self);
    }
    fn shrink_to_fit(&self) {
        Gcra::shrink_to_fit(self);
    }
}

/// Failed logins per source address over a sliding window, with attempts reserved
/// before they are checked.
pub struct LoginLimiter {
    max: usize,
    window: Duration,
    attempts: Mutex<HashMap<AddrKey, VecDeque<Instant>>>,
}

/// A reserved login attempt; [`LoginLimiter::succeeded`] gives it back.
#[derive(Debug)]
pub struct Attempt {
    key: AddrKey,
    at: Instant,
}

impl LoginLimiter {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        LoginLimiter { max: max_failures as usize, window, attempts: Mutex::new(HashMap::new()) }
    }

    /// Reserves an attempt for `ip`, or says in how many seconds one frees up.
    pub fn reserve(&self, ip: IpAddr) -> Result<Attempt, u64> {
        self.reserve_at(ip, Instant::now())
    }

    fn reserve_at(&self, ip: IpAddr, now: Instant) -> Result<Attempt, u64> {
        let mut map = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = AddrKey::of(ip);
        if map.len() >= MAX_KEYS && !map.contains_key(&key) {
            prune_map(&mut map, now, self.window);
            if map.len() >= MAX_KEYS {
                key = AddrKey::Overflow;
            }
        }
        let q = map.entry(key).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
            q.pop_front();
        }
        if q.len() >= self.max {
            let oldest = q.front().copied().unwrap_or(now);
            return Err(ceil_secs(self.window.saturating_sub(now.duration_since(oldest))));
        }
        q.push_back(now);
        Ok(Attempt { key, at: now })
    }

    /// The attempt succeeded: it does not count as a failure.
    pub fn succeeded(&self, attempt: Attempt) {
        let mut map = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = map.get_mut(&attempt.key) {
            if let Some(i) = q.iter().position(|t| *t == attempt.at) {
                q.remove(i);
            }
            if q.is_empty() {
                map.remove(&attempt.key);
            }
        }
    }

    pub fn prune(&self) {
        let mut map = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        prune_map(&mut map, Instant::now(), self.window);
        map.shrink_to_fit();
    }

    /// Addresses with recent failures (for tests and metrics).
    pub fn len(&self) -> usize {
        self.attempts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn prune_map(map: &mut HashMap<AddrKey, VecDeque<Instant>>, now: Instant, window: Duration) {
    map.retain(|_, q| {
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
        !q.is_empty()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_bucket_counts_down_refuses_then_refills_at_the_steady_rate() {
        let clock = FakeRelativeClock::default();
        let l = RateLimiter::with_clock(6, 3, clock.clone());
        let a = ip("10.0.0.1");
        for left in [2, 1, 0] {
            let d = l.check_address(a);
            assert!(d.allowed);
            assert_eq!((d.limit, d.remaining), (3, left));
        }
        let d = l.check_address(a);
        assert!(!d.allowed && d.remaining == 0);
        assert_eq!(d.reset, 20, "one request every 20 s at 3 a minute");
        assert!(l.check_address(ip("10.0.0.2")).allowed, "another address has its own bucket");
        // No window boundary: after 20 s exactly one more request fits, not a new burst.
        clock.advance(Duration::from_secs(20));
        assert!(l.check_address(a).allowed);
        assert!(!l.check_address(a).allowed);
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64_and_mapped_v4_is_v4() {
        let l = RateLimiter::with_clock(100, 2, FakeRelativeClock::default());
        assert!(l.check_address(ip("2001:db8:1:2::1")).allowed);
        assert!(l.check_address(ip("2001:db8:1:2:ffff::9")).allowed);
        assert!(!l.check_address(ip("2001:db8:1:2:aaaa::1")).allowed, "same /64");
        assert!(l.check_address(ip("2001:db8:1:3::1")).allowed, "another /64");
        assert_eq!(AddrKey::of(ip("::ffff:10.1.2.3")), AddrKey::of(ip("10.1.2.3")));
    }

    #[test]
    fn a_user_s_tokens_share_the_user_budget() {
        let l = RateLimiter::with_clock(4, 100, FakeRelativeClock::default());
        let mut allowed = 0;
        for i in 0..20 {
            if l.check_principal(&format!("tok_{i}"), "usr_1").allowed {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 4, "20 tokens of one user get the user's 4, not 4 each");
        assert!(l.check_principal("tok_x", "usr_2").allowed);
    }

    #[test]
    fn past_the_key_bound_new_addresses_share_one_bucket() {
        let clock = FakeRelativeClock::default();
        let mut l = RateLimiter::with_clock(100, 1, clock.clone());
        l.max_keys = 10;
        for i in 0..10u32 {
            assert!(l.check_address(IpAddr::from((i + 1).to_be_bytes())).allowed);
        }
        // The eleventh address is counted in the overflow bucket, and so is the twelfth.
        assert!(l.check_address(ip("10.9.9.1")).allowed);
        assert!(!l.check_address(ip("10.9.9.2")).allowed, "the overflow bucket is shared");
        assert_eq!(l.addresses.gcra.len(), 11, "ten addresses and the overflow, no more");
        // Once buckets have refilled (and an interval more), they are dropped and
        // addresses get their own again.
        clock.advance(Duration::from_secs(121));
        l.prune();
        assert!(l.check_address(ip("10.9.9.2")).allowed);
        assert!(l.check_address(ip("10.9.9.3")).allowed);
    }

    #[test]
    fn refilled_buckets_are_pruned() {
        let clock = FakeRelativeClock::default();
        let l = RateLimiter::with_clock(60, 60, clock.clone());
        for i in 0..50u32 {
            l.check_address(IpAddr::from(i.to_be_bytes()));
        }
        assert_eq!(l.len(), 50);
        clock.advance(Duration::from_secs(2));
        l.prune();
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn login_attempts_are_reserved_before_checking() {
        let l = LoginLimiter::new(10, Duration::from_secs(60));
        let a = ip("127.0.0.1");
        let t0 = Instant::now();
        // 500 concurrent attempts: the first 10 reserve, the rest are refused
        // before any of them has been checked.
        let mut reserved = Vec::new();
        let mut refused = 0;
        for _ in 0..500 {
            match l.reserve_at(a, t0) {
                Ok(r) => reserved.push(r),
                Err(retry) => {
                    assert!((1..=60).contains(&retry));
                    refused += 1;
                }
            }
        }
        assert_eq!((reserved.len(), refused), (10, 490));
        // A success gives its attempt back; failures keep theirs for the window.
        l.succeeded(reserved.pop().unwrap());
        assert!(l.reserve_at(a, t0).is_ok());
        assert!(l.reserve_at(a, t0).is_err());
        assert!(l.reserve_at(a, t0 + Duration::from_secs(60)).is_ok(), "the window slides");
        assert!(l.reserve_at(ip("127.0.0.2"), t0).is_ok());
    }
}
