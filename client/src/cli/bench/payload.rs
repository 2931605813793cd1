//! Benchmark record values: JSON-like click-stream events of an exact size, e.g.
//! `{"user_id":123,"event":"page_view","url":"/products/4312","ts":...,"pad":"lorem ipsum ..."}`,
//! padded with words (or truncated) to the requested bytes. Content comes from a seeded RNG so
//! runs are repeatable, and it compresses like real events do: neither zeros nor noise.

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const EVENTS: [&str; 8] = [
    "page_view",
    "add_to_cart",
    "checkout",
    "search",
    "login",
    "logout",
    "click",
    "scroll",
];
const WORDS: [&str; 32] = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua",
    "enim",
    "ad",
    "minim",
    "veniam",
    "quis",
    "nostrud",
    "exercitation",
    "ullamco",
    "laboris",
    "nisi",
    "aliquip",
    "commodo",
    "consequat",
];
const REFERRERS: [&str; 5] = ["direct", "google", "newsletter", "partner", "social"];

/// Base of the generated timestamps (2025-01-01T00:00:00Z).
const BASE_TS_MS: i64 = 1_735_689_600_000;

/// One event of exactly `size` bytes.
pub(crate) fn event(rng: &mut StdRng, seq: u64, size: usize) -> Vec<u8> {
    let user = rng.random_range(1..100_000u32);
    let url = match rng.random_range(0..4u8) {
        0 => format!("/products/{}", rng.random_range(1..10_000u32)),
        1 => format!("/search?q={}", WORDS[rng.random_range(0..WORDS.len())]),
        2 => format!("/users/{user}/orders"),
        _ => "/cart".to_string(),
    };
    let mut out = format!(
        "{{\"user_id\":{user},\"event\":\"{}\",\"url\":\"{url}\",\"ts\":{},\"referrer\":\"{}\",\"seq\":{seq},\"pad\":\"",
        EVENTS[rng.random_range(0..EVENTS.len())],
        BASE_TS_MS + seq as i64 * 3 + rng.random_range(0..3i64),
        REFERRERS[rng.random_range(0..REFERRERS.len())],
    )
    .into_bytes();
    let closing = b"\"}";
    let mut first = true;
    while out.len() + closing.len() < size {
        if !first {
            out.push(b' ');
        }
        first = false;
        out.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())].as_bytes());
    }
    if size >= closing.len() {
        out.truncate(size - closing.len());
        out.extend_from_slice(closing);
    }
    out.truncate(size);
    out
}

/// `count` distinct events of `size` bytes in one buffer, generated from `seed`.
pub(crate) fn pool(size: usize, count: usize, seed: u64) -> Vec<Bytes> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut buf = BytesMut::with_capacity(size * count);
    for seq in 0..count {
        buf.extend_from_slice(&event(&mut rng, seq as u64, size));
    }
    let buf = buf.freeze();
    (0..count)
        .map(|i| buf.slice(i * size..(i + 1) * size))
        .collect()
}

/// How many distinct values to generate for a run of `records` values of `size` bytes: enough
/// that no batch repeats a value (64 MiB worth, at least 16), never more than the run needs.
pub(crate) fn pool_len(records: u64, size: usize) -> usize {
    let wanted = ((64usize << 20) / size.max(1)).max(16);
    (records.min(wanted as u64) as usize).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_the_exact_size() {
        let mut rng = StdRng::seed_from_u64(1);
        for size in [0, 1, 2, 10, 100, 137, 1024, 10_000] {
            assert_eq!(event(&mut rng, 5, size).len(), size, "size {size}");
        }
    }

    #[test]
    fn events_read_as_json_when_large_enough() {
        let mut rng = StdRng::seed_from_u64(2);
        let e = event(&mut rng, 9, 300);
        let parsed: serde_json::Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(parsed["seq"], 9);
        assert!(parsed["pad"].as_str().unwrap().contains(' '));
    }

    #[test]
    fn pools_are_seeded_and_varied() {
        let a = pool(200, 50, 7);
        let b = pool(200, 50, 7);
        assert_eq!(a, b);
        assert!(a.iter().all(|v| v.len() == 200));
        let mut distinct = a.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 50);
        assert_eq!(pool_len(10, 1024), 10);
        assert_eq!(pool_len(1_000_000, 1024), 65_536);
        assert_eq!(pool_len(1_000_000, 1 << 20), 64);
        assert_eq!(pool_len(1_000_000, 100), 671_088);
    }
}
