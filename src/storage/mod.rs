//! Object storage: the one narrow interface the rest of the service uses for binary data.
//!
//! [`ObjectStorage`] has the handful of operations the golden rules need (streaming put and get,
//! ranged get, head, delete, list by prefix, batch delete, a reachability check). It is implemented
//! once over the `object_store` crate ([`backend::ObjectStoreBackend`]) for both S3 and the local
//! directory of the embedded default, and wrapped by [`faulty::FaultyStorage`] in tests to make any
//! operation fail.
//!
//! Architecture invariant: callers see exactly two kinds of failure that matter to them,
//! [`StorageError::NotFound`] and [`StorageError::Unavailable`] (HTTP 503); correctness never
//! depends on conditional writes, which some S3 servers (Garage) ignore.

pub mod backend;
pub mod bucket;
pub mod faulty;
pub mod http_client;
mod key;

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

pub use key::{InvalidKey, ObjectKey};

/// Shared handle to the configured store.
pub type Storage = Arc<dyn ObjectStorage>;

/// What a store knows about one object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
}

/// Which bytes of an object to read, as HTTP `Range` expresses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `start..end` (end exclusive).
    Bounded { start: u64, end: u64 },
    /// From `start` to the end of the object.
    From { start: u64 },
    /// The last `len` bytes.
    Suffix { len: u64 },
}

impl ByteRange {
    /// The bytes this range selects from an object of `size` bytes (clamped to its end), as the
    /// store serves them; `None` when it is unsatisfiable (HTTP 416).
    pub fn resolve(self, size: u64) -> Option<std::ops::Range<u64>> {
        match self {
            ByteRange::Bounded { start, end } if start < size && start < end => {
                Some(start..end.min(size))
            }
            ByteRange::From { start } if start < size => Some(start..size),
            ByteRange::Suffix { len } if len > 0 && size > 0 => {
                Some(size.saturating_sub(len)..size)
            }
            _ => None,
        }
    }
}

/// An object being read: its metadata, the byte range served, and the body as a stream.
pub struct ObjectRead {
    pub info: ObjectInfo,
    /// The range of the object that `body` yields (the whole object for an unranged get).
    pub range: std::ops::Range<u64>,
    pub body: BoxStream<'static, Result<Bytes, StorageError>>,
}

impl std::fmt::Debug for ObjectRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectRead")
            .field("info", &self.info)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

impl ObjectRead {
    /// Collects the body. Only for small objects and tests: downloads stream instead.
    pub async fn bytes(self) -> Result<Bytes, StorageError> {
        use futures::TryStreamExt;
        let chunks: Vec<Bytes> = self.body.try_collect().await?;
        Ok(chunks.concat().into())
    }
}

/// The operations of [`ObjectStorage`], named for fault injection and call counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Put,
    Get,
    Head,
    Copy,
    Delete,
    List,
    Check,
}

/// Storage failures, classified so callers can branch on them.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {key} not found")]
    NotFound { key: String },
    /// The store could not be reached or failed; the operation may succeed later (HTTP 503).
    #[error("object store unavailable during {operation:?} of {key:?}: {message}")]
    Unavailable {
        operation: Operation,
        key: String,
        message: String,
    },
    /// A listing met a key the object store client cannot read (`a//b`, `a/./b`: keys written
    /// by another tool); the listing cannot go past it, and retrying will not help.
    #[error("cannot list {prefix:?}: {message}; move or delete that object (no key of ours looks like it)")]
    Unlistable { prefix: String, message: String },
    /// A ranged read asked for bytes the object does not have (HTTP 416).
    #[error("range not satisfiable for object {key}")]
    RangeNotSatisfiable { key: String, size: u64 },
    #[error(transparent)]
    InvalidKey(#[from] InvalidKey),
}

impl StorageError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }
    /// Whether retrying later may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, StorageError::Unavailable { .. })
    }
}

/// The object store as the service uses it.
#[async_trait::async_trait]
pub trait ObjectStorage: Send + Sync + 'static {
    /// Writes a whole object atomically: readers see the old object or the new one, never a part.
    async fn put(&self, key: &ObjectKey, body: Bytes) -> Result<(), StorageError>;

    /// Writes an object from a stream (multipart on S3) without holding it in memory; returns
    /// the number of bytes written. The object appears only when the stream has ended.
    async fn put_stream(
        &self,
        key: &ObjectKey,
        body: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<u64, StorageError>;

    /// Writes an object of exactly `len` bytes from `body` with one request that starts before
    /// the body is complete, where the store supports it (S3 with credentials); other stores
    /// collect the body and [`Self::put`] it. The object appears only if the body yields exactly
    /// `len` bytes without failing; otherwise nothing is written.
    async fn put_sized(
        &self,
        key: &ObjectKey,
        len: u64,
        body: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<(), StorageError> {
        let body = collect_sized(key, len, body).await?;
        self.put(key, body).await
    }

    /// Whether [`Self::put_sized`] sends the object while its body is still being produced.
    fn streams_sized_puts(&self) -> bool {
        false
    }

    /// Reads an object, or the given range of it, as a stream.
    async fn get(
        &self,
        key: &ObjectKey,
        range: Option<ByteRange>,
    ) -> Result<ObjectRead, StorageError>;

    async fn head(&self, key: &ObjectKey) -> Result<ObjectInfo, StorageError>;

    /// Copies an object within the bucket (server-side where the store can), replacing `to`.
    async fn copy(&self, from: &ObjectKey, to: &ObjectKey) -> Result<(), StorageError>;

    /// Deletes an object; deleting a missing object succeeds.
    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError>;

    /// Deletes many objects (a batch request where the server supports it). Returns one result per
    /// key, in the order given; missing objects count as deleted.
    async fn delete_many(&self, keys: &[ObjectKey]) -> Vec<Result<(), StorageError>>;

    /// Every object whose key starts with `prefix` followed by `/` (path-segment semantics).
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError>;

    /// As [`Self::list`], telling `listed` how many objects have come so far as the listing goes
    /// (a bucket of millions takes minutes): at least at the end, and on S3 every page.
    async fn list_counted(
        &self,
        prefix: &str,
        listed: &(dyn Fn(usize) + Send + Sync),
    ) -> Result<Vec<ObjectInfo>, StorageError> {
        let objects = self.list(prefix).await?;
        listed(objects.len());
        Ok(objects)
    }

    /// Succeeds when the store (and its bucket) answers.
    async fn check(&self) -> Result<(), StorageError>;

    /// As [`Self::check`], for callers that ask on every missing object ([`read_confirmed`]):
    /// a store may count as answering without asking again when it answered a moment ago (a
    /// listing costs a request, and on some servers a walk of the bucket).
    async fn answers(&self) -> Result<(), StorageError> {
        self.check().await
    }
}

/// The whole object at `key`, for a caller that acts for good on its absence (a parse recorded as
/// failed for a missing dump or ELF): "not found" only while the store itself answers. A missing
/// bucket, or a proxy answering 404 for a store that is away, says "not found" of every object;
/// then the store's failure instead.
pub async fn read_confirmed(storage: &Storage, key: &ObjectKey) -> Result<Bytes, StorageError> {
    let read = async { storage.get(key, None).await?.bytes().await };
    match read.await {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.is_not_found() => match storage.answers().await {
            Ok(()) => Err(e),
            Err(away) => Err(away),
        },
        Err(e) => Err(e),
    }
}

/// The whole of `body`, which must be exactly `len` bytes (see [`ObjectStorage::put_sized`]).
pub async fn collect_sized(
    key: &ObjectKey,
    len: u64,
    mut body: BoxStream<'static, std::io::Result<Bytes>>,
) -> Result<Bytes, StorageError> {
    use futures::StreamExt;
    let failed = |message: String| StorageError::Unavailable {
        operation: Operation::Put,
        key: key.to_string(),
        message,
    };
    let mut collected = bytes::BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| failed(format!("the body failed: {e}")))?;
        if collected.len() as u64 + chunk.len() as u64 > len {
            return Err(failed(format!("the body is longer than {len} bytes")));
        }
        collected.extend_from_slice(&chunk);
    }
    if collected.len() as u64 != len {
        return Err(failed(format!(
            "the body ended after {} of {len} bytes",
            collected.len()
        )));
    }
    Ok(collected.freeze())
}

/// Streams a file from its start in 1 MiB chunks, read on the blocking pool (spooled uploads,
/// legacy files of `migrate-to-s3`).
pub fn file_stream(
    mut file: std::fs::File,
) -> Result<BoxStream<'static, std::io::Result<Bytes>>, std::io::Error> {
    use futures::StreamExt;
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(0))?;
    const CHUNK: usize = 1024 * 1024;
    Ok(futures::stream::try_unfold(Some(file), |file| async move {
        let Some(mut file) = file else {
            return Ok(None);
        };
        let (file, chunk) = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(CHUNK);
            (&mut file).take(CHUNK as u64).read_to_end(&mut buf)?;
            Ok::<_, std::io::Error>((file, buf))
        })
        .await
        .map_err(std::io::Error::other)??;
        if chunk.is_empty() {
            Ok(None)
        } else {
            Ok(Some((Bytes::from(chunk), Some(file))))
        }
    })
    .boxed())
}

/// The error with its sources, so a log line says *why* (e.g. "connection refused"). Also
/// used by the HTTP layer to log internal failures.
pub fn display_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
