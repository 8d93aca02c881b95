//! Prefixed, sortable identifiers (`prj_01J…`) and RFC 3339 timestamps.
//!
//! An id is a prefix plus a ULID-style 26-character Crockford base32 body: 48 bits
//! of milliseconds then 80 random bits. Ids made by one process are strictly
//! increasing (the random part is incremented inside one millisecond), so ordering
//! by id is ordering by creation, which cursor pagination relies on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static LAST: Mutex<u128> = Mutex::new(0);

/// A new id with the given prefix, e.g. `new_id("prj")` → `prj_01JD…`.
pub fn new_id(prefix: &str) -> String {
    let mut random = [0u8; 10];
    rand::thread_rng().fill_bytes(&mut random);
    let mut value = (u128::from(unix_millis()) << 80) | random.iter().fold(0u128, |a, b| (a << 8) | u128::from(*b));
    {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        if value <= *last {
            value = *last + 1;
        }
        *last = value;
    }
    encode(prefix, value)
}

/// A new request id (`req_…`, the shape of [`new_id`]): unique, but not ordered
/// across threads, so making one takes no lock and no random bytes. The 80 bits
/// after the time are a per-process random salt (16 bits) and a counter that
/// starts at a random value, so ids from one process never repeat and ids from two
/// processes collide only if both the salt and the counter's range match.
pub fn new_request_id() -> String {
    static BASE: OnceLock<(u16, u64)> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let (salt, start) = *BASE.get_or_init(|| {
        let mut rng = rand::thread_rng();
        (rng.next_u32() as u16, rng.next_u64())
    });
    let count = NEXT.fetch_add(1, Ordering::Relaxed).wrapping_add(start);
    encode("req", (u128::from(unix_millis()) << 80) | (u128::from(salt) << 64) | u128::from(count))
}

fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// `prefix_` and the 26 base32 characters of `value` (130 bits, the top 2 zero).
fn encode(prefix: &str, value: u128) -> String {
    let mut body = [0u8; 26];
    // Two characters, then twice twelve (60 bits each), so the shifts stay in 64 bits.
    let parts = [
        ((value >> 120) as u64, 0..2),
        ((value >> 60) as u64 & ((1 << 60) - 1), 2..14),
        (value as u64 & ((1 << 60) - 1), 14..26),
    ];
    for (bits, range) in parts {
        let last = range.end - 1;
        for i in range {
            body[i] = ALPHABET[((bits >> (5 * (last - i))) & 0x1f) as usize];
        }
    }
    let mut out = String::with_capacity(prefix.len() + 27);
    out.push_str(prefix);
    out.push('_');
    out.extend(body.iter().map(|&b| char::from(b)));
    out
}

/// Which bytes are in [`ALPHABET`].
const IN_ALPHABET: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = true;
        i += 1;
    }
    table
};

/// True when `s` looks like an id with this prefix (cheap shape check only).
pub fn has_shape(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .is_some_and(|body| body.len() == 26 && body.bytes().all(|b| IN_ALPHABET[usize::from(b)]))
}

/// Now, as RFC 3339 UTC with second precision (`2026-11-23T04:06:02Z`).
pub fn now_rfc3339() -> String {
    format_time(time::OffsetDateTime::now_utc())
}

/// Formats a time as RFC 3339 UTC with second precision; fixed width, so text order is time order.
pub fn format_time(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Parses an RFC 3339 timestamp (any offset).
pub fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_sortable_and_unique() {
        let ids: Vec<String> = (0..1000).map(|_| new_id("prj")).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
        }
        assert!(ids.iter().all(|i| has_shape(i, "prj")));
        assert!(!has_shape("prj_short", "prj"));
        assert!(!has_shape(&ids[0], "usr"));
    }

    #[test]
    fn request_ids_are_unique_and_shaped_like_ids() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|i| has_shape(i, "req")));
        // Only the alphabet's characters pass, in any position.
        let id = new_request_id();
        for bad in ['I', 'L', 'O', 'U', 'a', '-', '\u{e9}'] {
            let mut s: Vec<char> = id.chars().collect();
            s[10] = bad;
            assert!(!has_shape(&s.into_iter().collect::<String>(), "req"), "{bad}");
        }
    }

    #[test]
    fn ids_spell_their_value_in_crockford_base32() {
        let spell = |v: u128| encode("x", v);
        assert_eq!(spell(0), format!("x_{}", "0".repeat(26)));
        assert_eq!(spell(31), format!("x_{}Z", "0".repeat(25)));
        assert_eq!(spell(32), format!("x_{}10", "0".repeat(24)));
        // The top character holds the 3 high bits of 128.
        assert_eq!(spell(u128::MAX), format!("x_7{}", "Z".repeat(25)));
        assert_eq!(spell(1 << 60), format!("x_{}1{}", "0".repeat(13), "0".repeat(12)));
        assert_eq!(spell(1 << 120), format!("x_0{}", "1".to_string() + &"0".repeat(24)));
    }

    #[test]
    fn times_round_trip() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 20);
        let t = parse_time(&now).expect("parses");
        assert_eq!(format_time(t), now);
        assert!(parse_time("yesterday").is_none());
    }
}
