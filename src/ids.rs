//! Prefixed, sortable identifiers (`prj_01J…`) and RFC 3339 timestamps.
//!
//! An id is a prefix plus a ULID-style 26-character Crockford base32 body: 48 bits
//! of milliseconds then 80 random bits. Ids made by one process are strictly
//! increasing (the random part is incremented inside one millisecond), so ordering
//! by id is ordering by creation, which cursor pagination relies on.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static LAST: Mutex<u128> = Mutex::new(0);

/// A new id with the given prefix, e.g. `new_id("prj")` → `prj_01JD…`.
pub fn new_id(prefix: &str) -> String {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut random = [0u8; 10];
    rand::thread_rng().fill_bytes(&mut random);
    let mut value = (u128::from(millis) << 80) | random.iter().fold(0u128, |a, b| (a << 8) | u128::from(*b));
    {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        if value <= *last {
            value = *last + 1;
        }
        *last = value;
    }
    let mut body = [0u8; 26];
    for (i, slot) in body.iter_mut().enumerate() {
        let shift = 5 * (25 - i);
        *slot = ALPHABET[((value >> shift) & 0x1f) as usize];
    }
    let mut out = String::with_capacity(prefix.len() + 27);
    out.push_str(prefix);
    out.push('_');
    out.push_str(std::str::from_utf8(&body).unwrap_or_default());
    out
}

/// True when `s` looks like an id with this prefix (cheap shape check only).
pub fn has_shape(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .is_some_and(|body| body.len() == 26 && body.bytes().all(|b| ALPHABET.contains(&b)))
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
    fn times_round_trip() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 20);
        let t = parse_time(&now).expect("parses");
        assert_eq!(format_time(t), now);
        assert!(parse_time("yesterday").is_none());
    }
}
