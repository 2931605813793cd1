//! The brokers a [`crate::Client`] knows and its channels to them. A broker list comes from the
//! user (`http://a:7450,b:7451`, parsed by [`parse_broker_list`]) and grows with the addresses
//! `ClusterStatus` reports; nothing is forgotten, since a broker that is down now may be back
//! later. One broker is *preferred*: calls that any broker can serve go there first, and a
//! transport failure moves the preference on to the next broker of the list.
//!
//! Channels are pooled by URL and connect lazily (the first call opens the connection, a later
//! call after a failure reconnects), with the client's message size limits applied by the
//! callers that wrap them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::error::ClientError;

/// Turns one broker address into a URL: `host:port` gets `http://`, a URL is kept, a trailing
/// `/` dropped. Brokers advertise `host:port`; users may type either.
pub(crate) fn normalize_url(address: &str) -> String {
    let address = address.trim().trim_end_matches('/');
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

/// Parses a comma-separated broker list into URLs, in order, without duplicates.
pub(crate) fn parse_broker_list(list: &str) -> Result<Vec<String>, ClientError> {
    let mut urls: Vec<String> = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let url = normalize_url(part);
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    if urls.is_empty() {
        return Err(ClientError::InvalidArgument(format!(
            "'{list}' names no broker (expected e.g. http://127.0.0.1:7450,127.0.0.1:7451)"
        )));
    }
    Ok(urls)
}

/// The endpoint settings every channel of the client uses.
pub(crate) fn endpoint(url: &str) -> Result<Endpoint, ClientError> {
    let endpoint =
        Endpoint::from_shared(url.to_string()).map_err(|source| ClientError::Connect {
            url: url.to_string(),
            source: Arc::new(source),
        })?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_adaptive_window(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true))
}

/// Known brokers, the preferred one, and the channel pool.
#[derive(Debug)]
pub(crate) struct Brokers {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Every URL learnt, bootstrap list first.
    known: Vec<String>,
    /// Index into `known` of the broker tried first.
    preferred: usize,
    channels: HashMap<String, Channel>,
}

impl Brokers {
    /// A set of `known` URLs (at least one) preferring `known[preferred]`.
    pub(crate) fn new(known: Vec<String>, preferred: usize) -> Self {
        debug_assert!(preferred < known.len());
        Self {
            state: Mutex::new(State {
                known,
                preferred,
                channels: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts an already connected channel in the pool.
    pub(crate) fn insert_channel(&self, url: &str, channel: Channel) {
        self.lock().channels.insert(url.to_string(), channel);
    }

    /// The channel to `url`, created (lazily connecting) on first use.
    pub(crate) fn channel(&self, url: &str) -> Result<Channel, ClientError> {
        if let Some(channel) = self.lock().channels.get(url) {
            return Ok(channel.clone());
        }
        let channel = endpoint(url)?.connect_lazy();
        Ok(self
            .lock()
            .channels
            .entry(url.to_string())
            .or_insert(channel)
            .clone())
    }

    /// The preferred broker's URL.
    pub(crate) fn preferred(&self) -> String {
        let state = self.lock();
        state.known[state.preferred].clone()
    }

    /// Every known URL, the preferred first, then the others in list order after it.
    pub(crate) fn candidates(&self) -> Vec<String> {
        let state = self.lock();
        rotate(&state.known, state.preferred)
    }

    /// Every known URL in list order.
    pub(crate) fn known(&self) -> Vec<String> {
        self.lock().known.clone()
    }

    /// Makes `url` the preferred broker (it just answered).
    pub(crate) fn prefer(&self, url: &str) {
        let mut state = self.lock();
        if let Some(i) = state.known.iter().position(|k| k == url) {
            state.preferred = i;
        }
    }

    /// `url` failed in transport: if it is preferred, prefer the next broker instead.
    pub(crate) fn demote(&self, url: &str) {
        let mut state = self.lock();
        if state.known[state.preferred] == url {
            state.preferred = (state.preferred + 1) % state.known.len();
        }
    }

    /// Adds the brokers at these advertised addresses (`host:port` or URLs) not known yet
    /// (skipping any that is not a valid URL).
    pub(crate) fn learn<'a>(&self, addresses: impl IntoIterator<Item = &'a str>) {
        let mut state = self.lock();
        for address in addresses.into_iter().filter(|a| !a.trim().is_empty()) {
            let url = normalize_url(address);
            if !state.known.contains(&url) && Endpoint::from_shared(url.clone()).is_ok() {
                state.known.push(url);
            }
        }
    }
}

/// `items` starting at `first`, wrapping around.
fn rotate(items: &[String], first: usize) -> Vec<String> {
    items[first..]
        .iter()
        .chain(&items[..first])
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_split_trimmed_normalized_and_deduplicated() {
        assert_eq!(
            parse_broker_list("http://127.0.0.1:7450, 127.0.0.1:7451,,https://b:1/").unwrap(),
            [
                "http://127.0.0.1:7450",
                "http://127.0.0.1:7451",
                "https://b:1"
            ]
        );
        assert_eq!(
            parse_broker_list("a:1,http://a:1").unwrap(),
            ["http://a:1"],
            "the same broker twice is one broker"
        );
        assert!(parse_broker_list(" , ").is_err());
        assert_eq!(normalize_url("10.0.0.1:7450"), "http://10.0.0.1:7450");
    }

    #[test]
    fn preference_rotates_past_failed_brokers_and_follows_answers() {
        let brokers = Brokers::new(vec!["http://a:1".into(), "http://b:1".into()], 0);
        brokers.learn(["b:1", "c:1", ""]);
        assert_eq!(brokers.known(), ["http://a:1", "http://b:1", "http://c:1"]);
        brokers.demote("http://b:1");
        assert_eq!(
            brokers.preferred(),
            "http://a:1",
            "only the preferred is demoted"
        );
        brokers.demote("http://a:1");
        assert_eq!(
            brokers.candidates(),
            ["http://b:1", "http://c:1", "http://a:1"]
        );
        brokers.prefer("http://c:1");
        assert_eq!(brokers.preferred(), "http://c:1");
        brokers.demote("http://c:1");
        assert_eq!(brokers.preferred(), "http://a:1", "wraps around");
    }
}
