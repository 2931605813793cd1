//! The object-store conformance suite: what Silt relies on from any store it writes segments
//! to — local directory, memory, or an S3-compatible server (run against Garage in the
//! integration tests). Every check works under `prefix`, so it can run on a shared bucket.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

/// Runs every check under `prefix`, leaving nothing behind.
pub async fn run_all(store: Arc<dyn ObjectStore>, prefix: &str) {
    put_get_head(&store, prefix).await;
    range_reads(&store, prefix).await;
    empty_and_large_objects(&store, prefix).await;
    missing_keys(&store, prefix).await;
    list_and_delete(&store, prefix).await;
    concurrent_writers(&store, prefix).await;
}

fn path(prefix: &str, name: &str) -> Path {
    Path::from(format!("{}/{name}", prefix.trim_end_matches('/')))
}

fn pattern(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>(),
    )
}

/// A PUT is readable whole, with its size.
pub async fn put_get_head(store: &Arc<dyn ObjectStore>, prefix: &str) {
    let p = path(prefix, "basic/a.seg");
    let body = pattern(10_000, 1);
    store.put(&p, body.clone().into()).await.expect("put");
    assert_eq!(
        store.get(&p).await.expect("get").bytes().await.unwrap(),
        body
    );
    assert_eq!(store.head(&p).await.expect("head").size, 10_000);
    let replaced = pattern(500, 2);
    store
        .put(&p, replaced.clone().into())
        .await
        .expect("overwrite");
    assert_eq!(
        store.get(&p).await.unwrap().bytes().await.unwrap(),
        replaced
    );
    store.delete(&p).await.expect("delete");
}

/// Range GETs return exactly the bytes asked for, including the object's last byte.
pub async fn range_reads(store: &Arc<dyn ObjectStore>, prefix: &str) {
    let p = path(prefix, "range/r.seg");
    let body = pattern(100_000, 3);
    store.put(&p, body.clone().into()).await.unwrap();
    for r in [
        0..1u64,
        0..100_000,
        99_999..100_000,
        4096..8192,
        12_345..67_890,
    ] {
        let got = store.get_range(&p, r.clone()).await.expect("range get");
        assert_eq!(got, body.slice(r.start as usize..r.end as usize), "{r:?}");
    }
    let ranges = store
        .get_ranges(&p, &[0..10, 50_000..50_010])
        .await
        .unwrap();
    assert_eq!(ranges, vec![body.slice(0..10), body.slice(50_000..50_010)]);
    store.delete(&p).await.unwrap();
}

/// An empty object and a multi-megabyte one round-trip.
pub async fn empty_and_large_objects(store: &Arc<dyn ObjectStore>, prefix: &str) {
    let empty = path(prefix, "size/empty");
    store
        .put(&empty, Bytes::new().into())
        .await
        .expect("empty put");
    assert_eq!(store.head(&empty).await.unwrap().size, 0);
    assert!(
        store
            .get(&empty)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .is_empty()
    );
    let large = path(prefix, "size/large.seg");
    let body = pattern(24 << 20, 4);
    store
        .put(&large, body.clone().into())
        .await
        .expect("large put");
    assert_eq!(store.head(&large).await.unwrap().size, 24 << 20);
    let tail = store
        .get_range(&large, (24 << 20) - 64..24 << 20)
        .await
        .unwrap();
    assert_eq!(tail, body.slice(body.len() - 64..));
    assert_eq!(
        store.get(&large).await.unwrap().bytes().await.unwrap(),
        body
    );
    store.delete(&empty).await.unwrap();
    store.delete(&large).await.unwrap();
}

/// Missing keys are `NotFound`, never an empty success; deleting one is not an error.
pub async fn missing_keys(store: &Arc<dyn ObjectStore>, prefix: &str) {
    let p = path(prefix, "missing/none.seg");
    assert!(matches!(
        store.get(&p).await,
        Err(object_store::Error::NotFound { .. })
    ));
    assert!(matches!(
        store.head(&p).await,
        Err(object_store::Error::NotFound { .. })
    ));
    assert!(matches!(
        store.get_range(&p, 0..10).await,
        Err(object_store::Error::NotFound { .. })
    ));
    match store.delete(&p).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => panic!("deleting a missing key: {e}"),
    }
}

/// Listing a prefix shows exactly its objects; deleted objects disappear.
pub async fn list_and_delete(store: &Arc<dyn ObjectStore>, prefix: &str) {
    let names = [
        "list/a/1.seg",
        "list/a/2.seg",
        "list/a/3.seg",
        "list/b/1.seg",
    ];
    for n in names {
        store
            .put(&path(prefix, n), Bytes::from_static(b"x").into())
            .await
            .unwrap();
    }
    let mut listed: Vec<String> = store
        .list(Some(&path(prefix, "list/a")))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    listed.sort();
    let expected: Vec<String> = names[..3]
        .iter()
        .map(|n| path(prefix, n).to_string())
        .collect();
    assert_eq!(listed, expected);
    for n in names {
        store.delete(&path(prefix, n)).await.unwrap();
    }
    let left: Vec<_> = store
        .list(Some(&path(prefix, "list")))
        .try_collect()
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// Many writers at once: every object lands whole.
pub async fn concurrent_writers(store: &Arc<dyn ObjectStore>, prefix: &str) {
    let tasks: Vec<_> = (0..16u8)
        .map(|i| {
            let store = store.clone();
            let p = path(prefix, &format!("concurrent/{i}.seg"));
            tokio::spawn(async move {
                let body = pattern(256 << 10, i);
                store
                    .put(&p, body.clone().into())
                    .await
                    .expect("concurrent put");
                (p, body)
            })
        })
        .collect();
    for task in tasks {
        let (p, body) = task.await.unwrap();
        assert_eq!(store.get(&p).await.unwrap().bytes().await.unwrap(), body);
        store.delete(&p).await.unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::{S3Options, open_object_store};

    #[tokio::test]
    async fn memory_store_conforms() {
        let store = open_object_store("memory://", &S3Options::default()).unwrap();
        run_all(store, "conformance").await;
    }

    #[tokio::test]
    async fn local_directory_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_object_store(
            &format!("file://{}", dir.path().display()),
            &S3Options::default(),
        )
        .unwrap();
        run_all(store, "conformance").await;
    }
}
