//! In-memory rate limits: fixed one-minute windows per token or source address, and a
//! sliding window of failed logins per source address.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

/// What a rate-limit check decided, and the header values that describe it.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the window resets.
    pub reset: u64,
}

struct Window {
    start: Instant,
    count: u32,
}

#[derive(Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<String, Window>>,
}

impl RateLimiter {
    /// Counts one request against `key` and decides whether it may proceed.
    pub fn check(&self, key: &str, limit: u32) -> Decision {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let w = match windows.get_mut(key) {
            Some(w) => w,
            None => windows.entry(key.to_string()).or_insert(Window { start: now, count: 0 }),
        };
        if now.duration_since(w.start) >= WINDOW {
            *w = Window { start: now, count: 0 };
        }
        let allowed = w.count < limit;
        if allowed {
            w.count += 1;
        }
        let reset = WINDOW.saturating_sub(now.duration_since(w.start)).as_secs().max(1);
        Decision { allowed, limit, remaining: limit.saturating_sub(w.count), reset }
    }

    /// Drops windows that have ended.
    pub fn prune(&self) {
        let now = Instant::now();
        self.windows.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, w| now.duration_since(w.start) < WINDOW);
    }
}

/// Failed logins per source address over the last minute.
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl LoginLimiter {
    /// `Some(retry_after_secs)` when `ip` has used up its failures for the window.
    pub fn blocked(&self, ip: IpAddr, max_failures: u32) -> Option<u64> {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let q = map.get_mut(&ip)?;
        while q.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            q.pop_front();
        }
        if q.len() >= max_failures as usize {
            let oldest = *q.front()?;
            Some(WINDOW.saturating_sub(now.duration_since(oldest)).as_secs().max(1))
        } else {
            None
        }
    }

    pub fn record_failure(&self, ip: IpAddr) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).entry(ip).or_default().push_back(Instant::now());
    }

    pub fn prune(&self) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, q| {
            while q.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
                q.pop_front();
            }
            !q.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_down_then_refuses() {
        let l = RateLimiter::default();
        for i in 0..3 {
            let d = l.check("k", 3);
            assert!(d.allowed);
            assert_eq!(d.remaining, 2 - i);
        }
        let d = l.check("k", 3);
        assert!(!d.allowed && d.remaining == 0 && d.reset >= 1);
        assert!(l.check("other", 3).allowed);
    }

    #[test]
    fn login_failures_block_after_limit() {
        let l = LoginLimiter::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..10 {
            assert!(l.blocked(ip, 10).is_none());
            l.record_failure(ip);
        }
        assert!(l.blocked(ip, 10).is_some_and(|s| (1..=60).contains(&s)));
        assert!(l.blocked("127.0.0.2".parse().unwrap(), 10).is_none());
    }
}
