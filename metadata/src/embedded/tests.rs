use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::*;
use crate::clock::ManualClock;
use crate::conformance::{self, Harness};
use crate::store::OpResponse;

fn harness(store: Arc<EmbeddedStore>, clock: Arc<ManualClock>) -> Harness {
    let reaper = store.clone();
    Harness {
        store,
        prefix: b"/conformance/".to_vec(),
        advance: Box::new(move |d| {
            clock.advance_ms(d.as_millis() as i64);
            let reaper = reaper.clone();
            Box::pin(async move { reaper.expire_leases().await })
        }),
    }
}

#[tokio::test]
async fn in_memory_store_conforms() {
    let clock = ManualClock::new(1_000);
    let store = EmbeddedStore::open_in_memory(clock.clone()).unwrap();
    conformance::run_all(&harness(store, clock)).await;
}

#[tokio::test]
async fn on_disk_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let store = EmbeddedStore::open(&dir.path().join("meta.redb"), clock.clone()).unwrap();
    conformance::run_all(&harness(store, clock)).await;
}

#[tokio::test]
async fn starts_at_revision_one() {
    let store = EmbeddedStore::open_in_memory(ManualClock::new(0)).unwrap();
    assert_eq!(
        store.range(RangeRequest::key("x")).await.unwrap().revision,
        1
    );
    assert_eq!(store.put(b"x", b"1").await.unwrap(), 2);
}

#[tokio::test]
async fn data_revision_and_leases_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/meta.redb");
    let clock = ManualClock::new(0);
    let (revision, lease) = {
        let store = EmbeddedStore::open(&path, clock.clone()).unwrap();
        store.put(b"a", b"1").await.unwrap();
        store.put(b"b", b"2").await.unwrap();
        let lease = store.grant_lease(Duration::from_secs(5)).await.unwrap();
        let r = store
            .txn(Txn::new().and_then([Op::put_with_lease("l", "v", lease)]))
            .await
            .unwrap()
            .revision;
        (r, lease)
    };
    let store = EmbeddedStore::open(&path, clock.clone()).unwrap();
    assert_eq!(store.get(b"a").await.unwrap().unwrap().value, b"1");
    assert_eq!(
        store.range(RangeRequest::key("a")).await.unwrap().revision,
        revision
    );
    assert_eq!(store.put(b"c", b"3").await.unwrap(), revision + 1);
    // The lease restarted with a full TTL and still owns its key.
    clock.advance_ms(4_000);
    store.expire_leases().await;
    assert!(store.get(b"l").await.unwrap().is_some());
    clock.advance_ms(2_000);
    store.expire_leases().await;
    assert!(store.get(b"l").await.unwrap().is_none());
    let next = store.grant_lease(Duration::from_secs(1)).await.unwrap();
    assert!(next > lease, "lease ids never repeat");
}

#[tokio::test]
async fn a_second_open_of_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let _first = EmbeddedStore::open(&path, ManualClock::new(0)).unwrap();
    let err = EmbeddedStore::open(&path, ManualClock::new(0)).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
}

#[tokio::test]
async fn watch_before_kept_history_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    {
        let store = EmbeddedStore::open(&path, ManualClock::new(0)).unwrap();
        store.put(b"a", b"1").await.unwrap();
        store.put(b"a", b"2").await.unwrap();
    }
    let store = EmbeddedStore::open(&path, ManualClock::new(0)).unwrap();
    let mut stream = store.watch(RangeRequest::key("a"), 2).await.unwrap();
    assert!(matches!(
        stream.next().await,
        Some(Err(MetaError::Compacted { .. }))
    ));
    assert!(stream.next().await.is_none());
    // From now on works.
    let mut stream = store.watch(RangeRequest::key("a"), 0).await.unwrap();
    store.put(b"a", b"3").await.unwrap();
    let got = stream.next().await.unwrap().unwrap();
    assert_eq!(got.events[0].kv().value, b"3");
}

#[tokio::test]
async fn background_task_expires_leases() {
    let clock = ManualClock::new(0);
    let store = EmbeddedStore::open_in_memory(clock.clone()).unwrap();
    let lease = store.grant_lease(Duration::from_millis(500)).await.unwrap();
    store
        .txn(Txn::new().and_then([Op::put_with_lease("k", "v", lease)]))
        .await
        .unwrap();
    clock.advance_ms(1_000);
    for _ in 0..100 {
        if store.get(b"k").await.unwrap().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the lease was not expired by the background task");
}

#[tokio::test]
async fn inverted_ranges_are_empty() {
    let store = EmbeddedStore::open_in_memory(ManualClock::new(0)).unwrap();
    store.put(b"b", b"1").await.unwrap();
    let resp = store.range(RangeRequest::between("c", "a")).await.unwrap();
    assert_eq!((resp.count, resp.kvs.len()), (0, 0));
    let resp = store
        .txn(Txn::new().and_then([
            Op::Delete {
                key: b"c".to_vec(),
                range_end: b"a".to_vec(),
            },
            Op::get(RangeRequest::between("c", "a")),
        ]))
        .await
        .unwrap();
    assert_eq!(resp.responses[0], OpResponse::Delete(0));
    assert_eq!(resp.revision, 2, "deleting nothing is not a change");
    assert!(store.get(b"b").await.unwrap().is_some());
}

#[tokio::test]
async fn lease_expiry_is_one_watched_revision() {
    let clock = ManualClock::new(0);
    let store = EmbeddedStore::open_in_memory(clock.clone()).unwrap();
    let lease = store.grant_lease(Duration::from_secs(1)).await.unwrap();
    store
        .txn(Txn::new().and_then([
            Op::put_with_lease("l/a", "1", lease),
            Op::put_with_lease("l/b", "2", lease),
        ]))
        .await
        .unwrap();
    let before = store
        .range(RangeRequest::key("l/a"))
        .await
        .unwrap()
        .revision;
    let mut stream = store.watch(RangeRequest::prefix("l/"), 0).await.unwrap();
    clock.advance_ms(1_001);
    // Past its deadline the lease is gone, even before the reaper runs.
    let err = store
        .txn(Txn::new().and_then([Op::put_with_lease("l/c", "3", lease)]))
        .await
        .unwrap_err();
    assert!(matches!(err, MetaError::LeaseNotFound(_)), "{err:?}");
    store.expire_leases().await;
    let got = stream.next().await.unwrap().unwrap();
    assert_eq!(got.revision, before + 1);
    let deleted: Vec<&[u8]> = got
        .events
        .iter()
        .map(|e| {
            assert!(matches!(e, WatchEvent::Delete(_)), "{e:?}");
            assert_eq!(e.kv().mod_revision, before + 1);
            e.kv().key.as_slice()
        })
        .collect();
    assert_eq!(deleted, [&b"l/a"[..], b"l/b"]);
    assert!(matches!(
        store.keep_alive(lease).await,
        Err(MetaError::LeaseNotFound(_))
    ));
}

#[tokio::test]
async fn watch_ends_with_an_error_when_the_store_closes() {
    let store = EmbeddedStore::open_in_memory(ManualClock::new(0)).unwrap();
    let mut stream = store.watch(RangeRequest::prefix("x"), 0).await.unwrap();
    drop(store);
    assert!(matches!(
        stream.next().await,
        Some(Err(MetaError::Unavailable(_)))
    ));
    assert!(stream.next().await.is_none());
}
