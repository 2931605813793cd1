//! The local-directory store (`file://`, the embedded default): `object_store`'s
//! `LocalFileSystem`, except that Silt writes the objects itself — every put fsynced before it
//! returns, staged under a name garbage collection can see, and *background writes*.
//!
//! A put is staged as `<name>.<n>.partial` beside its object, fsynced, renamed into place and
//! its directory fsynced: durable when it returns. Unlike `LocalFileSystem`'s own staging names
//! (`<name>#<n>`, which its listings hide), that name is listed, so a staged file a crash left
//! behind is an unreferenced object that garbage collection deletes after its grace period,
//! not a file nobody ever removes.
//!
//! A background write ([`BackgroundWrite`] in the put's extensions: compaction's large objects)
//! is for a disk the produce path shares. Written whole and fsynced at the end, a 64 MiB object
//! leaves 64 MiB of dirty pages that one fsync sends to the disk in a burst, and every flush's
//! fsync on that disk waits behind it. So a background write is written [`SYNC_BYTES`] at a
//! time, each piece on the disk (`fdatasync`) before the next is written — at most one piece is
//! ever queued ahead of a flush — and paced at the writer's bytes/s, so the disk is free most of
//! the time. Other stores ignore the extension: an S3 PUT does not touch the broker's disk.

use std::fmt;
use std::io::Write;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// How much of a background write may be written before it is synced to the disk: the most a
/// flush's fsync can find queued ahead of it (about 0.25 ms of a disk doing 1 GB/s).
pub const SYNC_BYTES: usize = 256 << 10;

/// Put option (in [`PutOptions::extensions`]): write this object in the background of the
/// produce path, at most `bytes_per_sec`, on a store where that matters (a local directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackgroundWrite {
    /// Most bytes per second the write sends to the disk (0: unpaced, still synced piecewise).
    pub bytes_per_sec: u64,
}

impl BackgroundWrite {
    /// Put options carrying this request.
    pub fn put_options(self) -> PutOptions {
        let mut opts = PutOptions::default();
        opts.extensions.insert(self);
        opts
    }
}

/// A local directory as an object store (see the module's documentation).
#[derive(Debug)]
pub struct LocalStore {
    inner: LocalFileSystem,
}

impl LocalStore {
    /// The store over `dir` (which exists): every put fsynced, empty directories removed.
    pub fn new(dir: &std::path::Path) -> object_store::Result<Self> {
        Ok(Self {
            inner: LocalFileSystem::new_with_prefix(dir)?
                .with_fsync(true)
                .with_automatic_cleanup(true),
        })
    }
}

impl fmt::Display for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

/// Writes `payload` to `dest` as described in the module's documentation: piecewise and paced
/// when `background` says so. Stops between pieces once `stop` is set (the put was dropped),
/// removing the staged file. Returns the object's e-tag (`LocalFileSystem`'s scheme).
fn write_staged(
    dest: PathBuf,
    payload: PutPayload,
    background: Option<BackgroundWrite>,
    stop: &AtomicBool,
) -> std::io::Result<String> {
    let (mut file, staged) = stage(&dest)?;
    let started = Instant::now();
    let mut renamed = false;
    let result = (|| {
        match background {
            None => payload.iter().try_for_each(|b| file.write_all(b))?,
            Some(pace) => {
                let (mut written, mut unsynced) = (0u64, 0usize);
                for piece in payload.iter().flat_map(|b| b.chunks(SYNC_BYTES)) {
                    file.write_all(piece)?;
                    written += piece.len() as u64;
                    unsynced += piece.len();
                    if unsynced < SYNC_BYTES {
                        continue;
                    }
                    file.sync_data()?;
                    unsynced = 0;
                    if pace.bytes_per_sec > 0 {
                        let due = written as f64 / pace.bytes_per_sec as f64;
                        let due = started + Duration::from_secs_f64(due.min(86_400.0));
                        wait_until(due, stop)?;
                    }
                    if stop.load(Ordering::Relaxed) {
                        return Err(interrupted());
                    }
                }
            }
        }
        file.sync_all()?;
        let e_tag = e_tag(&file.metadata()?);
        drop(file);
        std::fs::rename(&staged, &dest)?;
        renamed = true;
        if let Some(dir) = dest.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(e_tag)
    })();
    // Once renamed, the staging name may be another write's.
    if result.is_err() && !renamed {
        let _ = std::fs::remove_file(&staged);
    }
    result
}

fn interrupted() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Interrupted,
        "the write was abandoned (its put was dropped)",
    )
}

/// Sleeps until `due`, waking every 50 ms to see whether `stop` was set.
fn wait_until(due: Instant, stop: &AtomicBool) -> std::io::Result<()> {
    while let Some(left) = due.checked_duration_since(Instant::now()) {
        if stop.load(Ordering::Relaxed) {
            return Err(interrupted());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
    Ok(())
}

/// The e-tag `LocalFileSystem` gives a file: inode, modification time (µs) and size, in hex.
fn e_tag(meta: &std::fs::Metadata) -> String {
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let inode = 0u64;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::SystemTime::UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros();
    format!("\"{inode:x}-{mtime:x}-{:x}\"", meta.len())
}

/// Creates a new staging file beside `dest`: `<dest>.<n>.partial`, `n` the first free. Its
/// directory is created (durably) when missing — also when garbage collection removed it, empty,
/// since the last put there.
fn stage(dest: &std::path::Path) -> std::io::Result<(std::fs::File, PathBuf)> {
    let mut created_dir = false;
    let mut n = 1u32;
    loop {
        let mut name = dest.as_os_str().to_owned();
        name.push(format!(".{n}.partial"));
        let path = PathBuf::from(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < u32::MAX => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !created_dir => {
                if let Some(dir) = dest.parent() {
                    crate::object::create_dir_durably(dir)?;
                }
                created_dir = true;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sets its flag when dropped: the put's future went away, so its blocking write stops.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if !matches!(opts.mode, PutMode::Overwrite) || !opts.attributes.is_empty() {
            return self.inner.put_opts(location, payload, opts).await;
        }
        let background = opts.extensions.get::<BackgroundWrite>().copied();
        let dest = self.inner.path_to_filesystem(location)?;
        let shown = dest.clone();
        let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
        let flag = Arc::clone(&stop.0);
        let e_tag =
            tokio::task::spawn_blocking(move || write_staged(dest, payload, background, &flag))
                .await
                .map_err(|e| object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(e),
                })?
                .map_err(|e| object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(std::io::Error::new(
                        e.kind(),
                        format!("writing {}: {e}", shown.display()),
                    )),
                })?;
        drop(stop);
        Ok(PutResult {
            e_tag: Some(e_tag),
            version: None,
            extensions: Default::default(),
        })
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;

    use super::*;

    fn payload(len: usize) -> PutPayload {
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        // Several pieces, one not a multiple of SYNC_BYTES, as a segment writer hands them.
        let (a, b) = bytes.split_at(len / 3 + 7);
        PutPayload::from_iter([Bytes::copy_from_slice(a), Bytes::copy_from_slice(b)])
    }

    #[tokio::test]
    async fn a_background_write_stores_the_object_whole_and_leaves_no_staging_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        let len = 2 * SYNC_BYTES + 12_345;
        let body = payload(len);
        let expected: Vec<u8> = body.iter().flat_map(|b| b.to_vec()).collect();
        let path = Path::from("parts/a/b.seg");
        let pace = BackgroundWrite { bytes_per_sec: 0 };
        let put = store
            .put_opts(&path, body, pace.put_options())
            .await
            .unwrap();
        let got = store.get(&path).await.unwrap();
        assert_eq!(
            put.e_tag, got.meta.e_tag,
            "the put answers the object's e-tag"
        );
        assert_eq!(got.bytes().await.unwrap().as_ref(), expected.as_slice());
        let listed: Vec<_> = store.list(None).try_collect().await.unwrap();
        assert_eq!(listed.len(), 1, "only the object: {listed:?}");
        // Overwriting answers the new content.
        store
            .put_opts(&path, PutPayload::from_static(b"new"), pace.put_options())
            .await
            .unwrap();
        let got = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(got.as_ref(), b"new");
    }

    #[tokio::test]
    async fn a_background_write_keeps_to_its_pace() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        // 3 pieces at 8 MiB/s: the last one is not written before 2 MiB / 8 MiB/s = 250 ms.
        let pace = BackgroundWrite {
            bytes_per_sec: 8 * SYNC_BYTES as u64,
        };
        let started = Instant::now();
        store
            .put_opts(
                &Path::from("x.seg"),
                payload(3 * SYNC_BYTES),
                pace.put_options(),
            )
            .await
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "paced: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_dropped_background_write_stops_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        // 8 pieces at one a second would take 7 s; the put is dropped after 100 ms.
        let pace = BackgroundWrite {
            bytes_per_sec: SYNC_BYTES as u64,
        };
        let path = Path::from("parts/slow.seg");
        let put = store.put_opts(&path, payload(8 * SYNC_BYTES), pace.put_options());
        let started = Instant::now();
        assert!(
            tokio::time::timeout(Duration::from_millis(100), put)
                .await
                .is_err()
        );
        let parts = dir.path().join("parts");
        let files = || std::fs::read_dir(&parts).map_or(0, |d| d.count());
        while files() > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the abandoned write went on"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(store.head(&path).await.is_err(), "no object");
    }

    #[tokio::test]
    async fn a_staging_file_left_by_a_crash_is_listed_so_it_can_be_collected() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        let dest = store
            .inner
            .path_to_filesystem(&Path::from("parts/x.seg"))
            .unwrap();
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let (_, staged) = stage(&dest).unwrap();
        let (_, second) = stage(&dest).unwrap();
        assert_ne!(staged, second, "each write stages under its own name");
        let listed: Vec<_> = store
            .list(Some(&Path::from("parts")))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert!(
            listed
                .iter()
                .all(|m| m.location.as_ref().ends_with(".partial"))
        );
    }

    #[tokio::test]
    async fn other_puts_are_the_plain_store_s() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        let path = Path::from("segments/s.seg");
        store
            .put_opts(
                &path,
                PutPayload::from_static(b"abc"),
                PutMode::Create.into(),
            )
            .await
            .unwrap();
        // Create mode is honoured (the plain store's), with or without the extension.
        let mut opts: PutOptions = PutMode::Create.into();
        opts.extensions.insert(BackgroundWrite { bytes_per_sec: 0 });
        let again = store
            .put_opts(&path, PutPayload::from_static(b"x"), opts)
            .await;
        assert!(
            matches!(again, Err(object_store::Error::AlreadyExists { .. })),
            "{again:?}"
        );
    }
}
