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
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// How much of a background write may be written before it is synced to the disk: the most a
/// flush's fsync can find queued ahead of it (about 1 ms of a disk doing 1 GB/s).
pub const SYNC_BYTES: usize = 1 << 20;

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
/// when `background` says so.
fn write_staged(
    dest: PathBuf,
    payload: PutPayload,
    background: Option<BackgroundWrite>,
) -> std::io::Result<()> {
    if let Some(dir) = dest.parent() {
        crate::object::create_dir_durably(dir)?;
    }
    let (mut file, staged) = stage(&dest)?;
    let started = Instant::now();
    let result = (|| {
        match background {
            None => payload.iter().try_for_each(|b| file.write_all(b))?,
            Some(pace) => {
                let mut written = 0u64;
                for piece in payload.iter().flat_map(|b| b.chunks(SYNC_BYTES)) {
                    file.write_all(piece)?;
                    file.sync_data()?;
                    written += piece.len() as u64;
                    if pace.bytes_per_sec > 0 {
                        let due = written as f64 / pace.bytes_per_sec as f64;
                        let due = Duration::from_secs_f64(due.min(86_400.0));
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                }
            }
        }
        file.sync_all()?;
        drop(file);
        std::fs::rename(&staged, &dest)?;
        if let Some(dir) = dest.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    result
}

/// Creates a new staging file beside `dest`: `<dest>.<n>.partial`, `n` the first free.
fn stage(dest: &std::path::Path) -> std::io::Result<(std::fs::File, PathBuf)> {
    for n in 1u32.. {
        let mut name = dest.as_os_str().to_owned();
        name.push(format!(".{n}.partial"));
        let path = PathBuf::from(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("u32 staging names exhausted")
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
        tokio::task::spawn_blocking(move || write_staged(dest, payload, background))
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
        let meta = self.inner.head(location).await?;
        Ok(PutResult {
            e_tag: meta.e_tag,
            version: meta.version,
            extensions: Default::default(),
        })
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
