//! [`ObjectStorage`] over the `object_store` crate: S3 for production, a local directory for the
//! embedded default (same key layout; puts go to a temporary file and are renamed into place, so
//! they are atomic like S3's).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, RetryConfig,
    WriteMultipart,
};

use super::{ByteRange, ObjectInfo, ObjectKey, ObjectRead, ObjectStorage, Operation, StorageError};
use crate::config::S3Config;

/// The configured store, S3 or local.
pub struct ObjectStoreBackend {
    store: Arc<dyn ObjectStore>,
    /// S3 with credentials: [`ObjectStorage::put_sized`] streams a single presigned PUT.
    sized_puts: Option<SizedPuts>,
    /// S3: the same bucket through a client that deletes with one `DELETE` per key. object_store
    /// deletes (even a single key) with S3's batch `DeleteObjects`, which some S3-compatible
    /// servers lack; there every deletion failed, and the outbox retried them for ever.
    /// Made when first needed: each client holds its own connection pool and TLS settings.
    one_by_one: Option<OneByOne>,
    /// Until when deletions use [`Self::one_by_one`]: set for [`SINGLE_DELETES_FOR`] when a batch
    /// delete failed where a single `DELETE` worked (a store without batch delete, or a batch that
    /// failed for a passing reason: the batch is tried again after that time).
    single_deletes: std::sync::Mutex<Option<std::time::Instant>>,
    /// Whether a `NotFound` answer to a delete means the object is gone (a local directory). S3
    /// answers a delete of a missing key with 204: a 404 there is a missing bucket, or a proxy's
    /// page in front of a store that is away, and the object may well still be there.
    missing_is_deleted: bool,
    /// The directory of a local store: [`ObjectStorage::check`] fails when it is gone (the
    /// local store lists a missing directory as empty).
    local_root: Option<std::path::PathBuf>,
    /// When the check that finished last started, and whether it succeeded, for
    /// [`ObjectStorage::answers`].
    answered: std::sync::Mutex<Option<(std::time::Instant, bool)>>,
}

/// How long a store that answered a check counts as answering for [`ObjectStorage::answers`]:
/// short, as a store that stops answering within it has its missing objects taken for missing.
const ANSWERED_FOR: Duration = Duration::from_secs(2);

/// How long deletions go one by one after a batch delete failed where a single one worked.
const SINGLE_DELETES_FOR: Duration = Duration::from_secs(3600);

type MakeStore = Box<dyn Fn() -> Option<Arc<dyn ObjectStore>> + Send + Sync>;

/// A client made on first use (`None` if it cannot be made).
struct OneByOne {
    make: MakeStore,
    made: std::sync::OnceLock<Option<Arc<dyn ObjectStore>>>,
}

impl OneByOne {
    fn new(make: MakeStore) -> Self {
        OneByOne {
            make,
            made: std::sync::OnceLock::new(),
        }
    }

    fn get(&self) -> Option<&Arc<dyn ObjectStore>> {
        self.made.get_or_init(|| (self.make)()).as_ref()
    }
}

/// What a streamed single PUT needs: a URL signed by object_store, and a client whose request
/// body may still be arriving.
struct SizedPuts {
    signer: Arc<object_store::aws::AmazonS3>,
    client: super::http_client::StreamingPut,
}

/// How long a presigned PUT URL is valid: it is used at once, by this process only.
const PRESIGNED_VALIDITY: Duration = Duration::from_secs(15 * 60);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Multipart part size for streamed puts (S3's minimum is 5 MiB).
const PART_SIZE: usize = 8 * 1024 * 1024;

impl ObjectStoreBackend {
    /// A store over a local directory, created if missing.
    pub fn local(dir: &std::path::Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| unavailable(Operation::Check, "", e))?;
        // Each object is on disk before the row naming it commits: without `fsync`, a power cut
        // (the embedded default on a small board) could keep the row and lose the file's data.
        let store = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| unavailable(Operation::Check, "", e))?
            .with_automatic_cleanup(true)
            .with_fsync(true);
        Ok(ObjectStoreBackend {
            store: Arc::new(store),
            sized_puts: None,
            one_by_one: None,
            single_deletes: std::sync::Mutex::new(None),
            missing_is_deleted: true,
            local_root: Some(dir.to_path_buf()),
            answered: std::sync::Mutex::new(None),
        })
    }

    /// An empty store in memory: what a dry run reads where the configured local directory does
    /// not exist yet (opening it would create it).
    pub fn empty() -> Self {
        ObjectStoreBackend {
            store: Arc::new(object_store::memory::InMemory::new()),
            sized_puts: None,
            one_by_one: None,
            single_deletes: std::sync::Mutex::new(None),
            missing_is_deleted: true,
            local_root: None,
            answered: std::sync::Mutex::new(None),
        }
    }

    /// A store over an S3 bucket. Requests time out and are retried only briefly, so an outage
    /// surfaces as [`StorageError::Unavailable`] within seconds instead of hanging requests.
    pub fn s3(config: &S3Config) -> Result<Self, StorageError> {
        let mut builder = AmazonS3Builder::new()
            .with_endpoint(&config.endpoint_url)
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_virtual_hosted_style_request(false)
            .with_client_options(client_options(config))
            .with_http_connector(super::http_client::BoundedConnector {
                connect_timeout: CONNECT_TIMEOUT,
                timeout: config.request_timeout,
            })
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(1),
                    base: 2.0,
                },
                max_retries: 2,
                retry_timeout: config.request_timeout,
            });
        let signed = config.access_key_id.is_some() && config.secret_access_key.is_some();
        builder = match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) => builder
                .with_access_key_id(id.expose())
                .with_secret_access_key(secret.expose()),
            _ => builder.with_skip_signature(true),
        };
        let single = builder.clone().with_disable_bulk_delete(true);
        let one_by_one = OneByOne::new(Box::new(move || {
            let store: Arc<dyn ObjectStore> = Arc::new(single.clone().build().ok()?);
            Some(store)
        }));
        let store = Arc::new(
            builder
                .build()
                .map_err(|e| unavailable(Operation::Check, "", e))?,
        );
        // Without credentials there is nothing to presign with: sized puts are collected.
        let sized_puts = if signed {
            let client =
                super::http_client::StreamingPut::new(CONNECT_TIMEOUT, config.request_timeout)
                    .map_err(|e| unavailable(Operation::Check, "", e))?;
            Some(SizedPuts {
                signer: store.clone(),
                client,
            })
        } else {
            None
        };
        Ok(ObjectStoreBackend {
            store,
            sized_puts,
            one_by_one: Some(one_by_one),
            single_deletes: std::sync::Mutex::new(None),
            missing_is_deleted: false,
            local_root: None,
            answered: std::sync::Mutex::new(None),
        })
    }
}

impl ObjectStoreBackend {
    /// The store deletions go to: the one-by-one client once the bucket showed it needs it.
    fn deleter(&self) -> &Arc<dyn ObjectStore> {
        if !self.deleting_one_by_one() {
            return &self.store;
        }
        self.one_by_one
            .as_ref()
            .and_then(OneByOne::get)
            .unwrap_or(&self.store)
    }

    /// After a failed batch delete: whether a single `DELETE` of `key` works (then deletions go
    /// one by one from now on).
    async fn try_one_by_one(&self, key: &ObjectKey) -> bool {
        let Some(single) = self.one_by_one.as_ref().and_then(OneByOne::get) else {
            return false;
        };
        if self.deleting_one_by_one()
            || delete_from(single, key, self.missing_is_deleted)
                .await
                .is_err()
        {
            return false;
        }
        let mut until = self
            .single_deletes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if until.is_none_or(|t| t <= std::time::Instant::now()) {
            tracing::warn!(
                "object_store_batch_delete_refused: the store refused a batch delete and took a \
                 single DELETE; deleting objects one by one for the next hour"
            );
        }
        *until = Some(std::time::Instant::now() + SINGLE_DELETES_FOR);
        true
    }

    fn deleting_one_by_one(&self) -> bool {
        self.single_deletes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| until > std::time::Instant::now())
    }
}

async fn delete_from(
    store: &Arc<dyn ObjectStore>,
    key: &ObjectKey,
    missing_is_deleted: bool,
) -> Result<(), StorageError> {
    match store.delete(&path(key)).await {
        Ok(()) => Ok(()),
        Err(object_store::Error::NotFound { .. }) if missing_is_deleted => Ok(()),
        Err(object_store::Error::NotFound { .. }) => Err(not_found_on_delete(key)),
        Err(e) => Err(map_err(Operation::Delete, key.as_str(), e)),
    }
}

/// A 404 answer to an S3 delete (see `ObjectStoreBackend::missing_is_deleted`).
fn not_found_on_delete(key: &ObjectKey) -> StorageError {
    unavailable(
        Operation::Delete,
        key.as_str(),
        "the store answered a delete with 404 (S3 answers 204 for a missing key): a missing \
         bucket, or not the S3 endpoint",
    )
}

/// `keys` deleted through `store`'s `delete_stream`: S3's `DeleteObjects`, 1,000 keys a request,
/// or single `DELETE`s, 20 at a time, on the one-by-one client. A key counts as deleted only by
/// its own answer, matched by its path: a request for a whole batch that failed yields one error
/// for all its keys, which no key can be credited with.
async fn delete_batch(
    store: &Arc<dyn ObjectStore>,
    keys: &[ObjectKey],
    missing_is_deleted: bool,
) -> Vec<Result<(), StorageError>> {
    if keys.is_empty() {
        return Vec::new();
    }
    let paths: Vec<object_store::Result<Path>> = keys.iter().map(|k| Ok(path(k))).collect();
    let results: Vec<object_store::Result<Path>> = store
        .delete_stream(futures::stream::iter(paths).boxed())
        .collect()
        .await;
    // A missing object's error names a file system path, not the key; the stores where missing
    // means deleted (a local directory) answer one result per key, in order.
    let one_per_key = results.len() == keys.len();
    let mut deleted = std::collections::HashSet::new();
    let mut missing = std::collections::HashSet::new();
    let mut failure = None;
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(path) => {
                deleted.insert(path.as_ref().to_string());
            }
            Err(object_store::Error::NotFound { .. }) if missing_is_deleted && one_per_key => {
                missing.insert(i);
            }
            Err(e) => {
                failure.get_or_insert_with(|| super::display_chain(e));
            }
        }
    }
    keys.iter()
        .enumerate()
        .map(|(i, key)| {
            if deleted.contains(path(key).as_ref()) || missing.contains(&i) {
                return Ok(());
            }
            Err(unavailable(
                Operation::Delete,
                key.as_str(),
                failure
                    .as_deref()
                    .unwrap_or("no result for this key from batch delete"),
            ))
        })
        .collect()
}

pub(crate) fn client_options(config: &S3Config) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(config.endpoint_url.starts_with("http://"))
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(config.request_timeout)
}

fn unavailable(operation: Operation, key: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable {
        operation,
        key: key.to_string(),
        message: e.to_string(),
    }
}

fn map_err(operation: Operation, key: &str, e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound {
            key: key.to_string(),
        },
        other => unavailable(operation, key, super::display_chain(&other)),
    }
}

/// The key verbatim: `Path::parse` keeps every character as it is, where `Path::from` would
/// percent-encode some (`~`, `#`, …) and so store an object under another key than its row names
/// (SPEC §3). A valid [`ObjectKey`] always parses; the fallback only guards against drift.
fn path(key: &ObjectKey) -> Path {
    Path::parse(key.as_str()).unwrap_or_else(|_| Path::from(key.as_str()))
}

fn info(meta: &object_store::ObjectMeta) -> ObjectInfo {
    ObjectInfo {
        key: meta.location.to_string(),
        size: meta.size,
        last_modified: meta.last_modified,
    }
}

/// A multipart upload that is aborted unless finished: explicitly on an error, from a spawned
/// task when dropped unfinished (a cancelled request, a runtime shutting down).
struct AbortOnDrop(Option<WriteMultipart>);

impl AbortOnDrop {
    async fn abort(&mut self) {
        if let Some(writer) = self.0.take() {
            let _ = writer.abort().await;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let (Some(writer), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                let _ = writer.abort().await;
            });
        }
    }
}

#[async_trait::async_trait]
impl ObjectStorage for ObjectStoreBackend {
    async fn put(&self, key: &ObjectKey, body: Bytes) -> Result<(), StorageError> {
        self.store
            .put(&path(key), body.into())
            .await
            .map_err(|e| map_err(Operation::Put, key.as_str(), e))?;
        Ok(())
    }

    async fn put_stream(
        &self,
        key: &ObjectKey,
        mut body: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<u64, StorageError> {
        let err = |e| map_err(Operation::Put, key.as_str(), e);
        let upload = self.store.put_multipart(&path(key)).await.map_err(err)?;
        // Whatever ends this early (a failed body or part, the caller giving up) aborts the
        // upload: its parts would otherwise stay in the bucket, invisible to LIST and reconcile.
        let mut upload = AbortOnDrop(Some(WriteMultipart::new_with_chunk_size(upload, PART_SIZE)));
        let mut written = 0u64;
        loop {
            let chunk = match body.next().await {
                None => break,
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    upload.abort().await;
                    return Err(unavailable(Operation::Put, key.as_str(), e));
                }
            };
            written += chunk.len() as u64;
            let Some(writer) = upload.0.as_mut() else {
                break;
            };
            if let Err(e) = writer.wait_for_capacity(4).await {
                upload.abort().await;
                return Err(err(e));
            }
            writer.put(chunk);
        }
        // `finish` aborts by itself when it fails. It runs as a task of its own: dropped
        // half-way (the caller cancelled, a shutdown past its grace), it would neither complete
        // nor abort, and the parts would stay in the bucket, billed and listed nowhere. Finished
        // after its caller went, the object is at worst an orphan, which reconcile finds.
        if let Some(writer) = upload.0.take() {
            tokio::spawn(writer.finish())
                .await
                .map_err(|e| unavailable(Operation::Put, key.as_str(), e))?
                .map_err(err)?;
        }
        Ok(written)
    }

    async fn put_sized(
        &self,
        key: &ObjectKey,
        len: u64,
        body: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<(), StorageError> {
        let Some(sized) = &self.sized_puts else {
            let body = super::collect_sized(key, len, body).await?;
            return self.put(key, body).await;
        };
        use object_store::signer::Signer;
        let url = sized
            .signer
            .signed_url(
                object_store::signer::Method::PUT,
                &path(key),
                PRESIGNED_VALIDITY,
            )
            .await
            .map_err(|e| map_err(Operation::Put, key.as_str(), e))?;
        sized
            .client
            .put(url.as_str(), len, body)
            .await
            .map_err(|message| unavailable(Operation::Put, key.as_str(), message))
    }

    fn streams_sized_puts(&self) -> bool {
        self.sized_puts.is_some()
    }

    async fn get(
        &self,
        key: &ObjectKey,
        range: Option<ByteRange>,
    ) -> Result<ObjectRead, StorageError> {
        let options = GetOptions {
            range: range.map(|r| match r {
                ByteRange::Bounded { start, end } => GetRange::Bounded(start..end),
                ByteRange::From { start } => GetRange::Offset(start),
                ByteRange::Suffix { len } => GetRange::Suffix(len),
            }),
            ..Default::default()
        };
        let result = match self.store.get_opts(&path(key), options).await {
            Ok(result) => result,
            // object_store reports an unsatisfiable range as a generic error; tell it apart by a
            // HEAD so callers can answer 416 instead of 503.
            Err(e @ object_store::Error::Generic { .. }) if range.is_some() => {
                let meta = self.head(key).await?;
                if range_is_unsatisfiable(range, meta.size) {
                    return Err(StorageError::RangeNotSatisfiable {
                        key: key.to_string(),
                        size: meta.size,
                    });
                }
                return Err(map_err(Operation::Get, key.as_str(), e));
            }
            Err(e) => return Err(map_err(Operation::Get, key.as_str(), e)),
        };
        // Some ranges the store serves without complaint select nothing: an empty suffix
        // (`bytes=-0`) comes back as the empty range `size..size`. Unsatisfiable is decided here
        // by the same rule for every backend and the in-memory path (`ByteRange::resolve`).
        if range_is_unsatisfiable(range, result.meta.size) {
            return Err(StorageError::RangeNotSatisfiable {
                key: key.to_string(),
                size: result.meta.size,
            });
        }
        let owned_key = key.to_string();
        Ok(ObjectRead {
            info: info(&result.meta),
            range: result.range.clone(),
            body: result
                .into_stream()
                .map_err(move |e| map_err(Operation::Get, &owned_key, e))
                .boxed(),
        })
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectInfo, StorageError> {
        let meta = self
            .store
            .head(&path(key))
            .await
            .map_err(|e| map_err(Operation::Head, key.as_str(), e))?;
        Ok(info(&meta))
    }

    async fn copy(&self, from: &ObjectKey, to: &ObjectKey) -> Result<(), StorageError> {
        self.store
            .copy(&path(from), &path(to))
            .await
            .map_err(|e| map_err(Operation::Copy, from.as_str(), e))
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        let Err(e) = delete_from(self.deleter(), key, self.missing_is_deleted).await else {
            return Ok(());
        };
        // Perhaps a store without batch delete: a single DELETE tells.
        if self.try_one_by_one(key).await {
            return Ok(());
        }
        Err(e)
    }

    async fn delete_many(&self, keys: &[ObjectKey]) -> Vec<Result<(), StorageError>> {
        let results = delete_batch(self.deleter(), keys, self.missing_is_deleted).await;
        // Every key failed: an outage, or a store without batch delete. One single DELETE tells
        // them apart without waiting out a timeout per key when the store is down.
        let all_failed = !results.is_empty() && results.iter().all(Result::is_err);
        if let (true, Some(first)) = (all_failed, keys.first()) {
            if self.try_one_by_one(first).await {
                let mut rest =
                    delete_batch(self.deleter(), &keys[1..], self.missing_is_deleted).await;
                rest.insert(0, Ok(()));
                return rest;
            }
        }
        results
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        self.list_counted(prefix, &|_| {}).await
    }

    async fn list_counted(
        &self,
        prefix: &str,
        listed: &(dyn Fn(usize) + Send + Sync),
    ) -> Result<Vec<ObjectInfo>, StorageError> {
        let prefix_path =
            Path::parse(prefix).map_err(|e| map_err(Operation::List, prefix, e.into()))?;
        let mut stream = self.store.list(Some(&prefix_path));
        let mut objects = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| match e {
                object_store::Error::InvalidPath { source } => StorageError::Unlistable {
                    prefix: prefix.to_string(),
                    message: source.to_string(),
                },
                e => map_err(Operation::List, prefix, e),
            })?;
            objects.push(info(&meta));
            // S3 lists 1,000 keys a page.
            if objects.len() % 1000 == 0 {
                listed(objects.len());
            }
        }
        listed(objects.len());
        Ok(objects)
    }

    async fn check(&self) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        let checked = self.check_now().await;
        // The newest check decides, by when it started: a slow success that began before a
        // failure must not overwrite it.
        let mut answered = self.answered.lock().unwrap_or_else(|e| e.into_inner());
        if answered.is_none_or(|(at, _)| at <= started) {
            *answered = Some((started, checked.is_ok()));
        }
        checked
    }

    async fn answers(&self) -> Result<(), StorageError> {
        let answered = *self.answered.lock().unwrap_or_else(|e| e.into_inner());
        if answered.is_some_and(|(at, ok)| ok && at.elapsed() < ANSWERED_FOR) {
            return Ok(());
        }
        self.check().await
    }
}

impl ObjectStoreBackend {
    /// What [`ObjectStorage::check`] asks.
    async fn check_now(&self) -> Result<(), StorageError> {
        if let Some(root) = &self.local_root {
            if !tokio::fs::metadata(root).await.is_ok_and(|m| m.is_dir()) {
                return Err(unavailable(
                    Operation::Check,
                    "",
                    format!("the storage directory {} is missing", root.display()),
                ));
            }
        }
        // Listing a prefix that holds nothing fails when the bucket is missing. On S3 it is an
        // index lookup; some servers walk the bucket for it (s3s-fs), hence `answers`.
        let probe = Path::from(".readyz-probe");
        let mut listing = self.store.list(Some(&probe));
        match listing.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(map_err(Operation::Check, "", e)),
        }
    }
}

fn range_is_unsatisfiable(range: Option<ByteRange>, size: u64) -> bool {
    range.is_some_and(|range| range.resolve(size).is_none())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use async_trait::async_trait;
    use object_store::memory::InMemory;
    use object_store::{
        CopyOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, PutMultipartOptions,
        PutOptions, PutPayload, PutResult, UploadPart,
    };

    use super::*;

    /// An in-memory bucket with the quirks of real servers on demand: no batch delete (every
    /// `delete_stream` fails, as a server without `DeleteObjects` answers), and multipart parts
    /// that fail after the first.
    #[derive(Debug)]
    struct Quirky {
        bucket: Arc<InMemory>,
        no_batch_delete: bool,
        failing_parts: bool,
        aborted: Arc<AtomicBool>,
        batch_calls: AtomicUsize,
        /// Deletes answer as object_store reports a request for a whole chunk of keys that
        /// failed: one error for the chunk, `NotFound` for a 404 (a missing bucket, a proxy's
        /// page). With `first_chunk_only`, only the first of two chunks fails (the first half
        /// of the keys); the second is deleted and answered key by key.
        whole_chunk_404: bool,
        first_chunk_only: bool,
        /// Listings meet a key the client cannot read (written by another tool).
        unlistable_key: bool,
    }

    impl Quirky {
        fn over(bucket: &Arc<InMemory>) -> Self {
            Quirky {
                bucket: bucket.clone(),
                no_batch_delete: false,
                whole_chunk_404: false,
                first_chunk_only: false,
                unlistable_key: false,
                failing_parts: false,
                aborted: Arc::default(),
                batch_calls: AtomicUsize::new(0),
            }
        }
    }

    impl std::fmt::Display for Quirky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Quirky")
        }
    }

    #[derive(Debug)]
    struct FailingParts {
        inner: Box<dyn MultipartUpload>,
        parts: usize,
        aborted: Arc<AtomicBool>,
    }

    #[async_trait]
    impl MultipartUpload for FailingParts {
        fn put_part(&mut self, data: PutPayload) -> UploadPart {
            self.parts += 1;
            if self.parts > 1 {
                return Box::pin(async {
                    Err(object_store::Error::Generic {
                        store: "Quirky",
                        source: "503 SlowDown".into(),
                    })
                });
            }
            self.inner.put_part(data)
        }
        async fn complete(&mut self) -> object_store::Result<PutResult> {
            self.inner.complete().await
        }
        async fn abort(&mut self) -> object_store::Result<()> {
            self.aborted.store(true, Ordering::SeqCst);
            self.inner.abort().await
        }
    }

    #[async_trait]
    impl ObjectStore for Quirky {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            self.bucket.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            let inner = self.bucket.put_multipart_opts(location, opts).await?;
            if !self.failing_parts {
                return Ok(inner);
            }
            Ok(Box::new(FailingParts {
                inner,
                parts: 0,
                aborted: self.aborted.clone(),
            }))
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.bucket.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            if self.whole_chunk_404 {
                let (bucket, first_only) = (self.bucket.clone(), self.first_chunk_only);
                return futures::stream::once(async move {
                    let mut paths: Vec<Path> = locations.try_collect().await?;
                    let half = if first_only {
                        paths.len() / 2
                    } else {
                        paths.len()
                    };
                    let failed = object_store::Error::NotFound {
                        path: "a whole chunk".into(),
                        source: "404 page not found".into(),
                    };
                    let rest = futures::stream::iter(paths.split_off(half).into_iter().map(Ok));
                    let rest: Vec<_> = bucket.delete_stream(rest.boxed()).collect().await;
                    Ok::<_, object_store::Error>(std::iter::once(Err(failed)).chain(rest))
                })
                .map_ok(futures::stream::iter)
                .try_flatten()
                .boxed();
            }
            if !self.no_batch_delete {
                return self.bucket.delete_stream(locations);
            }
            self.batch_calls.fetch_add(1, Ordering::SeqCst);
            locations
                .map(|_| {
                    Err(object_store::Error::Generic {
                        store: "Quirky",
                        source: "501 NotImplemented: POST ?delete".into(),
                    })
                })
                .boxed()
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            if self.unlistable_key {
                let bad = Path::parse("coredumps//x.dmp").unwrap_err();
                return futures::stream::iter([Err(bad.into())]).boxed();
            }
            self.bucket.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<ListResult> {
            self.bucket.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: CopyOptions,
        ) -> object_store::Result<()> {
            self.bucket.copy_opts(from, to, options).await
        }
    }

    fn backend(store: Arc<Quirky>, one_by_one: Option<Arc<Quirky>>) -> ObjectStoreBackend {
        ObjectStoreBackend {
            store,
            sized_puts: None,
            one_by_one: one_by_one.map(|s| {
                let store: Arc<dyn ObjectStore> = s;
                OneByOne::new(Box::new(move || Some(store.clone())))
            }),
            single_deletes: std::sync::Mutex::new(None),
            missing_is_deleted: false,
            local_root: None,
            answered: std::sync::Mutex::new(None),
        }
    }

    /// A backend over an in-memory bucket whose multipart parts after the first fail.
    fn with_failing_parts() -> (Arc<Quirky>, ObjectStoreBackend) {
        let quirky = Arc::new(Quirky {
            failing_parts: true,
            ..Quirky::over(&Arc::new(InMemory::new()))
        });
        (quirky.clone(), backend(quirky, None))
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::parse(format!("coredumps/abcd/{name}.dmp")).unwrap()
    }

    #[tokio::test]
    async fn a_key_the_client_cannot_read_fails_the_listing_naming_it_and_for_good() {
        let quirky = Arc::new(Quirky {
            unlistable_key: true,
            ..Quirky::over(&Arc::new(InMemory::new()))
        });
        let e = backend(quirky, None).list("coredumps").await.unwrap_err();
        assert!(matches!(e, StorageError::Unlistable { .. }), "{e}");
        assert!(!e.is_transient(), "retrying does not help: {e}");
        let text = e.to_string();
        assert!(
            text.contains("coredumps//x.dmp") && text.contains("move or delete"),
            "{text}"
        );
    }

    async fn stored(backend: &ObjectStoreBackend, name: &str) -> bool {
        backend.head(&key(name)).await.is_ok()
    }

    #[tokio::test]
    async fn a_store_without_batch_delete_is_deleted_from_one_key_at_a_time() {
        let bucket = Arc::new(InMemory::new());
        let batchless = Arc::new(Quirky {
            no_batch_delete: true,
            ..Quirky::over(&bucket)
        });
        let b = backend(batchless.clone(), Some(Arc::new(Quirky::over(&bucket))));
        for name in ["1", "2", "3", "4"] {
            b.put(&key(name), Bytes::from_static(b"x")).await.unwrap();
        }
        let results = b.delete_many(&[key("1"), key("2"), key("3")]).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        for name in ["1", "2", "3"] {
            assert!(!stored(&b, name).await, "{name} is still stored");
        }
        // Learnt once: later deletions go one by one without trying the batch again.
        let batches = batchless.batch_calls.load(Ordering::SeqCst);
        b.delete(&key("4")).await.unwrap();
        assert!(!stored(&b, "4").await);
        assert_eq!(batchless.batch_calls.load(Ordering::SeqCst), batches);
    }

    #[tokio::test]
    async fn a_failed_batch_request_deletes_none_of_its_keys() {
        // The bucket is missing, or a proxy answers 404 for a store that is away: one error for
        // the whole request, and single deletes answered 404 too. No key is gone.
        let bucket = Arc::new(InMemory::new());
        let away = || {
            Arc::new(Quirky {
                whole_chunk_404: true,
                ..Quirky::over(&bucket)
            })
        };
        let b = backend(away(), Some(away()));
        for name in ["1", "2", "3"] {
            b.put(&key(name), Bytes::from_static(b"x")).await.unwrap();
        }
        let results = b.delete_many(&[key("1"), key("2"), key("3")]).await;
        assert!(results.iter().all(Result::is_err), "{results:?}");
        let error = b.delete(&key("1")).await.unwrap_err();
        assert!(error.is_transient() && !error.is_not_found(), "{error:?}");
        // Of two chunks, the first failed: its keys failed, the second's were deleted, each
        // credited by its own answer (not by its place among the answers).
        let b = backend(
            Arc::new(Quirky {
                whole_chunk_404: true,
                first_chunk_only: true,
                ..Quirky::over(&bucket)
            }),
            None,
        );
        b.put(&key("4"), Bytes::from_static(b"x")).await.unwrap();
        let results = b
            .delete_many(&[key("1"), key("2"), key("3"), key("4")])
            .await;
        let deleted: Vec<bool> = results.iter().map(Result::is_ok).collect();
        assert_eq!(deleted, [false, false, true, true], "{results:?}");
        assert!(stored(&b, "1").await && stored(&b, "2").await);
        assert!(!stored(&b, "3").await && !stored(&b, "4").await);
        // Where missing means deleted (a local directory), a missing key is deleted.
        let dir = tempfile::tempdir().unwrap();
        let local = ObjectStoreBackend::local(dir.path()).unwrap();
        local
            .put(&key("5"), Bytes::from_static(b"x"))
            .await
            .unwrap();
        let results = local.delete_many(&[key("6"), key("5")]).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        local.delete(&key("6")).await.unwrap();
    }

    #[tokio::test]
    async fn a_local_store_whose_directory_is_gone_does_not_answer() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("objects");
        let local = ObjectStoreBackend::local(&root).unwrap();
        local.check().await.unwrap();
        std::fs::remove_dir(&root).unwrap();
        let error = local.check().await.unwrap_err();
        assert!(error.is_transient(), "{error:?}");
        // A failed check is not forgotten by a recent success.
        assert!(local.answers().await.is_err());
    }

    #[tokio::test]
    async fn when_single_deletes_fail_too_the_batch_errors_stand() {
        // A store that is down refuses both: nothing is switched, every key reports its failure.
        let bucket = Arc::new(InMemory::new());
        let down = || {
            Arc::new(Quirky {
                no_batch_delete: true,
                ..Quirky::over(&bucket)
            })
        };
        let b = backend(down(), Some(down()));
        let results = b.delete_many(&[key("1"), key("2")]).await;
        assert!(results.iter().all(Result::is_err), "{results:?}");
        assert!(!b.deleting_one_by_one());
        // Without a one-by-one client (a local directory) there is nothing to fall back to.
        let b = backend(down(), None);
        assert!(b.delete(&key("1")).await.is_err());
    }

    #[tokio::test]
    async fn a_streamed_put_whose_part_fails_is_aborted() {
        let (quirky, b) = with_failing_parts();
        // Eight parts' worth: the second part fails, and the failure shows while the later
        // parts wait for room (before `finish`, which would abort by itself).
        let part = Bytes::from(vec![7u8; PART_SIZE]);
        let chunks: Vec<std::io::Result<Bytes>> = (0..8).map(|_| Ok(part.clone())).collect();
        let result = b
            .put_stream(&key("big"), futures::stream::iter(chunks).boxed())
            .await;
        assert!(result.is_err());
        assert!(
            quirky.aborted.load(Ordering::SeqCst),
            "the upload was left open"
        );
        assert!(!stored(&b, "big").await);
    }

    #[tokio::test]
    async fn a_streamed_put_given_up_by_its_caller_is_aborted() {
        let (quirky, b) = with_failing_parts();
        // A body that sends a little and then nothing: the request is dropped meanwhile.
        let body = futures::stream::iter([Ok(Bytes::from_static(b"some"))])
            .chain(futures::stream::pending())
            .boxed();
        let stalled = key("stalled");
        let put = b.put_stream(&stalled, body);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), put)
                .await
                .is_err()
        );
        for _ in 0..100 {
            if quirky.aborted.load(Ordering::SeqCst) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the dropped upload was not aborted");
    }
}
