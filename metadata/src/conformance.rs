//! The conformance suite every [`MetaStore`] passes: the embedded store in unit tests, etcd in
//! the integration tests. Each check uses only keys under [`Harness::prefix`] and asserts
//! revisions relative to what it observed, so it runs on a shared store too.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;

use crate::error::MetaError;
use crate::store::{
    Compare, CompareOp, CompareTarget, MetaStore, Op, OpResponse, RangeRequest, Txn, WatchEvent,
};

/// What the suite needs from a store under test.
pub struct Harness {
    /// The store under test.
    pub store: Arc<dyn MetaStore>,
    /// Key prefix for this run.
    pub prefix: Vec<u8>,
    /// Lets at least `d` of time pass for lease expiry: a manual clock moves (and the store
    /// reaps), a real store sleeps.
    pub advance: Box<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .finish_non_exhaustive()
    }
}

impl Harness {
    fn key(&self, k: &str) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.extend_from_slice(k.as_bytes());
        key
    }
}

/// Runs every check.
pub async fn run_all(h: &Harness) {
    revisions_and_versions(h).await;
    range_and_limits(h).await;
    txn_compares(h).await;
    txn_get_sees_own_writes(h).await;
    limits_rejected(h).await;
    leases_expire_and_keep_alive(h).await;
    revoke_deletes_keys(h).await;
    watch_replays_then_streams(h).await;
    watch_from_compacted_history_fails(h).await;
}

async fn revision(h: &Harness) -> i64 {
    h.store
        .range(RangeRequest::key(h.key("__probe")))
        .await
        .unwrap()
        .revision
}

/// Revisions grow by one per mutating call; keys carry create/mod revisions and versions.
pub async fn revisions_and_versions(h: &Harness) {
    let k = h.key("rv/k");
    let r0 = revision(h).await;
    let r1 = h.store.put(&k, b"1").await.unwrap();
    assert_eq!(r1, r0 + 1);
    let kv = h.store.get(&k).await.unwrap().unwrap();
    assert_eq!(
        (
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.value.as_slice()
        ),
        (r1, r1, 1, &b"1"[..])
    );
    let r2 = h.store.put(&k, b"2").await.unwrap();
    assert_eq!(r2, r1 + 1);
    let kv = h.store.get(&k).await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r2, 2)
    );
    // A read-only or failed transaction does not move the revision.
    let resp = h
        .store
        .txn(
            Txn::new()
                .when([Compare::missing(k.clone())])
                .and_then([Op::put(k.clone(), "x")]),
        )
        .await
        .unwrap();
    assert!(!resp.succeeded);
    assert_eq!(resp.revision, r2);
    assert_eq!(h.store.delete(&k).await.unwrap(), 1);
    assert_eq!(revision(h).await, r2 + 1);
    assert_eq!(
        h.store.delete(&k).await.unwrap(),
        0,
        "deleting a missing key"
    );
    assert_eq!(
        revision(h).await,
        r2 + 1,
        "deleting nothing is not a change"
    );
    assert!(h.store.get(&k).await.unwrap().is_none());
    let r4 = h.store.put(&k, b"3").await.unwrap();
    let kv = h.store.get(&k).await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.version),
        (r4, 1),
        "re-created keys start over"
    );
}

/// Ranges are ordered, limited and counted.
pub async fn range_and_limits(h: &Harness) {
    for k in ["rg/a", "rg/b", "rg/c", "rg/d"] {
        h.store.put(&h.key(k), k.as_bytes()).await.unwrap();
    }
    h.store.put(&h.key("rh"), b"outside").await.unwrap();
    let all = h
        .store
        .range(RangeRequest::prefix(h.key("rg/")))
        .await
        .unwrap();
    let keys: Vec<Vec<u8>> = all.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, ["rg/a", "rg/b", "rg/c", "rg/d"].map(|k| h.key(k)));
    assert_eq!((all.count, all.more), (4, false));
    let limited = h
        .store
        .range(RangeRequest::prefix(h.key("rg/")).with_limit(2))
        .await
        .unwrap();
    assert_eq!(
        (limited.kvs.len(), limited.count, limited.more),
        (2, 4, true)
    );
    let counted = h
        .store
        .range(RangeRequest {
            count_only: true,
            ..RangeRequest::prefix(h.key("rg/"))
        })
        .await
        .unwrap();
    assert_eq!((counted.kvs.len(), counted.count), (0, 4));
    let between = h
        .store
        .range(RangeRequest::between(h.key("rg/b"), h.key("rg/d")))
        .await
        .unwrap();
    let keys: Vec<Vec<u8>> = between.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, ["rg/b", "rg/c"].map(|k| h.key(k)));
    let deleted = h
        .store
        .txn(Txn::new().and_then([Op::delete_prefix(h.key("rg/"))]))
        .await
        .unwrap();
    assert_eq!(deleted.responses, vec![OpResponse::Delete(4)]);
    assert!(
        h.store.get(&h.key("rh")).await.unwrap().is_some(),
        "a prefix delete stays in its prefix"
    );
}

/// Compares pick the branch; only that branch runs.
pub async fn txn_compares(h: &Harness) {
    let k = h.key("tc/k");
    let other = h.key("tc/other");
    let created = h
        .store
        .txn(
            Txn::new()
                .when([Compare::missing(k.clone())])
                .and_then([Op::put(k.clone(), "v1")]),
        )
        .await
        .unwrap();
    assert!(created.succeeded);
    let kv = h.store.get(&k).await.unwrap().unwrap();

    let resp = h
        .store
        .txn(
            Txn::new()
                .when([Compare::value(k.clone(), "nope")])
                .and_then([Op::put(other.clone(), "s")])
                .or_else([Op::put(other.clone(), "f")]),
        )
        .await
        .unwrap();
    assert!(!resp.succeeded);
    assert_eq!(
        h.store.get(&other).await.unwrap().unwrap().value,
        b"f",
        "the failure branch ran"
    );

    let resp = h
        .store
        .txn(
            Txn::new()
                .when([
                    Compare::mod_revision(k.clone(), kv.mod_revision),
                    Compare::value(k.clone(), "v1"),
                ])
                .and_then([Op::put(k.clone(), "v2")]),
        )
        .await
        .unwrap();
    assert!(resp.succeeded);
    let stale = h
        .store
        .txn(
            Txn::new()
                .when([Compare::mod_revision(k.clone(), kv.mod_revision)])
                .and_then([Op::put(k.clone(), "v3")]),
        )
        .await
        .unwrap();
    assert!(!stale.succeeded, "a stale mod_revision fails the compare");
    assert_eq!(h.store.get(&k).await.unwrap().unwrap().value, b"v2");

    let version = |op, v| Compare::new(k.clone(), op, CompareTarget::Version(v));
    for (cmp, expected) in [
        (version(CompareOp::Greater, 1), true),
        (version(CompareOp::Less, 2), false),
        (version(CompareOp::NotEqual, 2), false),
        (version(CompareOp::Equal, 2), true),
    ] {
        let resp = h.store.txn(Txn::new().when([cmp.clone()])).await.unwrap();
        assert_eq!(resp.succeeded, expected, "{cmp:?}");
    }
    let missing_value = h
        .store
        .txn(Txn::new().when([Compare::value(h.key("tc/none"), "")]))
        .await
        .unwrap();
    assert!(
        !missing_value.succeeded,
        "a missing key never equals a value"
    );
}

/// A Get inside a transaction sees the transaction's own earlier writes.
pub async fn txn_get_sees_own_writes(h: &Harness) {
    let k = h.key("own/k");
    let resp = h
        .store
        .txn(Txn::new().and_then([
            Op::put(k.clone(), "mine"),
            Op::get(RangeRequest::key(k.clone())),
        ]))
        .await
        .unwrap();
    let OpResponse::Get(got) = &resp.responses[1] else {
        panic!("{resp:?}")
    };
    assert_eq!(got.kvs[0].value, b"mine");
    assert_eq!(got.kvs[0].mod_revision, resp.revision);
}

/// Requests over the limits are refused whole.
pub async fn limits_rejected(h: &Harness) {
    let limits = h.store.limits();
    let before = revision(h).await;
    let too_many: Vec<Op> = (0..=limits.max_txn_ops)
        .map(|i| Op::put(h.key(&format!("lim/{i}")), "v"))
        .collect();
    let err = h
        .store
        .txn(Txn::new().and_then(too_many))
        .await
        .unwrap_err();
    assert!(matches!(err, MetaError::InvalidRequest(_)), "{err:?}");
    let dup = h
        .store
        .txn(Txn::new().and_then([Op::put(h.key("lim/d"), "1"), Op::put(h.key("lim/d"), "2")]))
        .await
        .unwrap_err();
    assert!(matches!(dup, MetaError::InvalidRequest(_)), "{dup:?}");
    let put_delete = h
        .store
        .txn(Txn::new().and_then([Op::put(h.key("lim/e"), "1"), Op::delete(h.key("lim/e"))]))
        .await
        .unwrap_err();
    assert!(
        matches!(put_delete, MetaError::InvalidRequest(_)),
        "{put_delete:?}"
    );
    let huge = vec![0u8; limits.max_request_bytes + 1];
    let big = h
        .store
        .txn(Txn::new().and_then([Op::put(h.key("lim/big"), huge)]))
        .await
        .unwrap_err();
    assert!(matches!(big, MetaError::InvalidRequest(_)), "{big:?}");
    assert_eq!(revision(h).await, before, "refused requests change nothing");
    assert_eq!(
        h.store
            .range(RangeRequest::prefix(h.key("lim/")))
            .await
            .unwrap()
            .count,
        0
    );
}

/// Keys put with a lease live while it is kept alive and go when it expires.
pub async fn leases_expire_and_keep_alive(h: &Harness) {
    let ttl = Duration::from_secs(2);
    let lease = h.store.grant_lease(ttl).await.unwrap();
    let k = h.key("lease/k");
    h.store
        .txn(Txn::new().and_then([Op::put_with_lease(k.clone(), "alive", lease)]))
        .await
        .unwrap();
    assert_eq!(h.store.get(&k).await.unwrap().unwrap().lease, lease);
    (h.advance)(Duration::from_millis(1200)).await;
    assert!(h.store.keep_alive(lease).await.unwrap() >= Duration::from_secs(1));
    (h.advance)(Duration::from_millis(1200)).await;
    assert!(h.store.get(&k).await.unwrap().is_some(), "kept alive");
    let mut gone = false;
    for _ in 0..40 {
        (h.advance)(Duration::from_millis(500)).await;
        if h.store.get(&k).await.unwrap().is_none() {
            gone = true;
            break;
        }
    }
    assert!(gone, "the key goes with its expired lease");
    let expired = h.store.keep_alive(lease).await;
    assert!(
        matches!(expired, Err(MetaError::LeaseNotFound(_))),
        "{expired:?}"
    );
    let err = h
        .store
        .txn(Txn::new().and_then([Op::put_with_lease(h.key("lease/x"), "v", lease)]))
        .await
        .unwrap_err();
    assert!(matches!(err, MetaError::LeaseNotFound(_)), "{err:?}");
}

/// Revoking a lease deletes its keys at once.
pub async fn revoke_deletes_keys(h: &Harness) {
    let lease = h.store.grant_lease(Duration::from_secs(60)).await.unwrap();
    for k in ["revoke/a", "revoke/b"] {
        h.store
            .txn(Txn::new().and_then([Op::put_with_lease(h.key(k), "v", lease)]))
            .await
            .unwrap();
    }
    let before = revision(h).await;
    h.store.revoke_lease(lease).await.unwrap();
    assert_eq!(
        revision(h).await,
        before + 1,
        "one revision for the whole revoke"
    );
    assert_eq!(
        h.store
            .range(RangeRequest::prefix(h.key("revoke/")))
            .await
            .unwrap()
            .count,
        0
    );
}

/// A watch replays history from its start revision, then streams live changes, in order.
pub async fn watch_replays_then_streams(h: &Harness) {
    let w = |k: &str| h.key(&format!("watch/{k}"));
    let start = revision(h).await + 1;
    h.store.put(&w("a"), b"1").await.unwrap();
    h.store.put(&h.key("unwatched"), b"x").await.unwrap();
    let mut stream = h
        .store
        .watch(RangeRequest::prefix(h.key("watch/")), start)
        .await
        .unwrap();
    h.store.put(&w("b"), b"2").await.unwrap();
    h.store.delete(&w("a")).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let resp = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("watch event")
            .expect("stream open")
            .unwrap();
        for e in resp.events {
            assert_eq!(e.kv().mod_revision, resp.revision);
            let kind = if matches!(e, WatchEvent::Put(_)) {
                "put"
            } else {
                "delete"
            };
            seen.push((kind, e.kv().key.clone()));
        }
    }
    assert_eq!(
        seen,
        vec![("put", w("a")), ("put", w("b")), ("delete", w("a"))]
    );
}

/// A watch from a revision older than the compacted history fails with `Compacted` and ends, so
/// the caller re-reads and watches again from the current revision.
pub async fn watch_from_compacted_history_fails(h: &Harness) {
    let k = h.key("compact/k");
    let old = h.store.put(&k, b"1").await.unwrap();
    h.store.put(&k, b"2").await.unwrap();
    let now = h.store.put(&k, b"3").await.unwrap();
    h.store.compact(now).await.expect("compact");
    // Compacting again, to the same or an older revision, is not an error; to a revision the
    // store has not reached is.
    h.store.compact(now).await.expect("compact again");
    h.store
        .compact(old)
        .await
        .expect("compact to an older revision");
    assert!(h.store.compact(now + 1000).await.is_err());
    // Values stay.
    assert_eq!(h.store.get(&k).await.unwrap().unwrap().value, b"3");
    let mut stream = h
        .store
        .watch(RangeRequest::key(k.clone()), old)
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an answer");
    assert!(
        matches!(first, Some(Err(MetaError::Compacted { .. }))),
        "{first:?}"
    );
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream ends");
    assert!(end.is_none(), "{end:?}");
    // Watching again from the current revision works.
    let mut stream = h
        .store
        .watch(RangeRequest::key(k.clone()), now + 1)
        .await
        .unwrap();
    let next = h.store.put(&k, b"4").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.revision, next);
}
