//! Storing the image while the bundle is still arriving (issue 18: an upload at the speed of one
//! PUT).
//!
//! An upload's biggest cost is the image's PUT; validation needs the whole body (the ZIP's central
//! directory is at its end), so [`super::upload`] alone could only start that PUT after the body
//! had arrived and the image had been extracted and checked. [`EarlyImage`] starts it sooner:
//!
//! 1. The HTTP layer hands every received chunk of the bundle to [`EarlyImage::feed`] besides
//!    spooling it. A blocking thread (the *tap*) reads the chunks as a ZIP stream
//!    (`zip::read::read_zipfile_from_stream`, local headers in body order) up to the entry
//!    `{code}.bin` and decompresses it as it arrives.
//! 2. Meanwhile a task opens the transaction, locks the model (as every firmware change does;
//!    if another change holds the lock, the early path gives up rather than wait) and reads the
//!    model's stored versions and its keys queued for deletion (neither can change while the
//!    lock is held). Once the first [`PREFIX`] bytes of the image are out, its app
//!    descriptor names the version; when it is new, the task withdraws pending deletions of its
//!    keys if there are any (the outbox invariant) and starts a single PUT of
//!    `{code}/{version}/firmware.bin` with the entry's declared size
//!    ([`crate::storage::ObjectStorage::put_sized`]), fed by the tap: usually without another
//!    round trip to the database.
//! 3. After receipt the upload takes the lock and the PUT over ([`EarlyImage::locked`]).
//!    Validation runs as before, on the whole spooled body, in SPEC §7 order: the streamed image
//!    is kept only when validation hands out an image of the same version read from the same
//!    place ([`ZipOrigin`]: the same local header, compressed size, method, size and CRC), which
//!    makes it the same bytes decompressed the same way: a ZIP whose first local header is not
//!    the entry its central directory names cannot store anything else. Until then the PUT's
//!    last byte is held back ([`EarlyPut::complete`]), so a PUT of anything else never reaches
//!    its declared length and no store commits it, not even late, after its answer was lost. (The tap does not hash
//!    the image: validation does, for the row, and a second SHA-256 pass cost a millisecond of
//!    CPU per 1.5 MiB while the store was busy with the PUT.) Otherwise, or when the streamed PUT failed, the validated
//!    image is PUT again as before; a failed upload deletes what was written, still under the
//!    lock.
//!
//! Nothing is lost or half-written: a PUT of a body that ends short or broken is aborted by the
//! store (the length is declared; a body longer than declared fails here, as an HTTP client
//! would cut it at that length and complete the PUT); if the receipt fails after the image's PUT started,
//! the [`Locked`] handed over is dropped unused: it withholds the last byte, waits for the PUT
//! and deletes the key *before* its transaction (and the model lock) ends, so it cannot delete
//! what another upload of that version wrote later.
//!
//! When it runs: on PostgreSQL with a store that streams sized puts (S3 with credentials). On
//! SQLite the transaction would hold the database's single write lock while the client is still
//! sending; a local directory gains nothing from starting early. The model lock is held from the
//! image's first bytes to the end of the upload, bounded by `FIRMWARE_UPLOAD_TIMEOUT_SECONDS`;
//! other changes to the same model wait for it, as they wait for any upload.
//!
//! When it gives up (and the upload goes on the ordinary way): the image entry is not in the
//! body before a large other entry ([`SKIP_MAX`]), its local header has no sizes (a data
//! descriptor), its descriptor is unreadable, or the tap falls more than [`QUEUE_MAX`] behind
//! the network.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::bundle::ZipOrigin;
use super::store::StoreError;
use crate::config::DatabaseKind;
use crate::db::firmware_versions as fw;
use crate::db::{Db, Tx};
use crate::fleet::FirmwareVersion;
use crate::layout::{firmware_key, firmware_keys, Artifact};
use crate::outbox;
use crate::storage::{ObjectKey, Storage};

/// How many decompressed bytes of the image name its version: the image header (24), the first
/// segment's header (8) and the app descriptor (256).
pub const PREFIX: usize = 24 + 8 + 256;

/// The largest entry the tap reads past to find the image (it decompresses what it skips).
pub const SKIP_MAX: u64 = 1024 * 1024;

/// The most received bytes the tap may have left to read before it is abandoned.
pub const QUEUE_MAX: u64 = 8 * 1024 * 1024;

/// Decompressed bytes per chunk sent to the PUT, and chunks in flight to it.
const CHUNK: usize = 64 * 1024;
const CHUNKS_IN_FLIGHT: usize = 16;

/// The early path of one upload; see the module documentation.
pub struct EarlyImage {
    /// To the tap; `None` once the body has ended or the tap was abandoned.
    input: Option<std::sync::mpsc::Sender<Bytes>>,
    /// Bytes sent to the tap that it has not read yet.
    queued: Arc<AtomicU64>,
    /// `None` once taken by [`Self::locked`]. Dropping it (the request ended) stops the task, and
    /// a [`Handoff`] already sent is undone as it drops.
    handoff: Option<oneshot::Receiver<Handoff>>,
}

impl EarlyImage {
    /// Starts the tap and the task that locks and PUTs, where the early path applies (see the
    /// module documentation); `None` elsewhere.
    pub fn start(
        db: &Db,
        storage: &Storage,
        model_id: i64,
        model_code: &str,
        max_entry_bytes: u64,
    ) -> Option<Self> {
        if db.kind() != DatabaseKind::Postgres || !storage.streams_sized_puts() {
            return None;
        }
        let (input, chunks) = std::sync::mpsc::channel();
        let queued = Arc::new(AtomicU64::new(0));
        let (events, tapped) = mpsc::channel(CHUNKS_IN_FLIGHT);
        // Where the image came from goes its own way, once its end is verified: the PUT's client
        // stops reading the body at the declared length, so nothing after the last chunk would
        // be read from `events`.
        let (ended, streamed) = oneshot::channel();
        let name = Artifact::Bin.bundle_entry(model_code);
        let reader = ChannelReader {
            chunks,
            current: Bytes::new(),
            queued: queued.clone(),
            position: 0,
        };
        tokio::task::spawn_blocking(move || tap(reader, &name, max_entry_bytes, &events, ended));
        let (handoff, handed) = oneshot::channel();
        tokio::spawn(lock_and_put(
            tapped,
            streamed,
            db.clone(),
            storage.clone(),
            model_id,
            handoff,
        ));
        Some(EarlyImage {
            input: Some(input),
            queued,
            handoff: Some(handed),
        })
    }

    /// Hands a received chunk of the bundle to the tap; never waits. A tap too far behind is
    /// abandoned (the upload goes on without it).
    pub fn feed(&mut self, chunk: &Bytes) {
        let Some(input) = &self.input else {
            return;
        };
        let behind = self.queued.fetch_add(chunk.len() as u64, Ordering::AcqRel);
        if behind > QUEUE_MAX || input.send(chunk.clone()).is_err() {
            self.input = None;
        }
    }

    /// Once the whole body has been received: the tap reads to its end, and this is the model
    /// lock and what the early path found and started, once the tap has got that far; `None`
    /// when it gave up before (the caller locks the model itself).
    pub async fn locked(mut self) -> Option<Locked> {
        self.input = None;
        self.handoff.take()?.await.ok()?.0.take()
    }
}

/// What the tap tells the task.
enum Tapped {
    /// The image's version and declared (uncompressed) size.
    Version(FirmwareVersion, u64),
    Chunk(Bytes),
    Failed(String),
}

/// The received chunks as one `Read`; ends when the sender is dropped.
struct ChannelReader {
    chunks: std::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
    queued: Arc<AtomicU64>,
    /// Bytes of the body read so far.
    position: u64,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.recv() {
                Ok(chunk) => {
                    self.queued.fetch_sub(chunk.len() as u64, Ordering::AcqRel);
                    self.current = chunk;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        self.position += n as u64;
        Ok(n)
    }
}

/// The tap (a blocking thread): finds the image entry in the stream and sends it on.
fn tap(
    mut reader: ChannelReader,
    name: &str,
    max_entry_bytes: u64,
    events: &mpsc::Sender<Tapped>,
    ended: oneshot::Sender<ZipOrigin>,
) {
    let outcome = loop {
        let header_start = reader.position;
        let mut entry = match zip::read::read_zipfile_from_stream(&mut reader) {
            Ok(Some(entry)) => entry,
            Ok(None) => break "no image before the central directory".to_string(),
            Err(e) => break format!("unreadable as a stream: {e}"),
        };
        if entry.name().ok().as_deref() != Some(name) {
            if entry.size() > SKIP_MAX {
                break format!("a large entry ({} bytes) before the image", entry.size());
            }
            if let Err(e) = std::io::copy(&mut entry, &mut std::io::sink()) {
                break format!("an entry before the image: {e}");
            }
            continue;
        }
        let declared = entry.size();
        if declared > max_entry_bytes || declared < PREFIX as u64 {
            break format!("the image declares {declared} bytes");
        }
        let origin = ZipOrigin {
            header_start,
            compressed_size: entry.compressed_size(),
            size: declared,
            crc32: entry.crc32(),
            method: entry.compression(),
        };
        break match send_image(&mut entry, origin, events, ended) {
            Ok(()) => return,
            Err(reason) => reason,
        };
    };
    tracing::debug!(reason = %outcome, "firmware_tap_gave_up");
    let _ = events.blocking_send(Tapped::Failed(outcome));
}

/// Sends the image's version, then its bytes, then (once the entry has ended with its declared
/// size and CRC) its origin to `ended`; the error says why it stopped.
fn send_image(
    entry: &mut impl Read,
    origin: ZipOrigin,
    events: &mpsc::Sender<Tapped>,
    ended: oneshot::Sender<ZipOrigin>,
) -> Result<(), String> {
    let declared = origin.size;
    let mut prefix = vec![0u8; PREFIX];
    entry
        .read_exact(&mut prefix)
        .map_err(|e| format!("the image's first bytes: {e}"))?;
    let desc = esp_image::parse_app_desc(&prefix[32..]).map_err(|e| e.to_string())?;
    let version = FirmwareVersion::parse(&desc.version).map_err(|e| e.to_string())?;
    events
        .blocking_send(Tapped::Version(version, declared))
        .map_err(gone)?;
    let mut total = prefix.len() as u64;
    events
        .blocking_send(Tapped::Chunk(prefix.into()))
        .map_err(gone)?;
    loop {
        let mut buf = vec![0u8; CHUNK];
        let n =
            super::bundle::read_up_to(entry, &mut buf).map_err(|e| format!("the image: {e}"))?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        total += n as u64;
        if total > declared {
            return Err(format!(
                "the image is longer than its declared {declared} bytes"
            ));
        }
        events
            .blocking_send(Tapped::Chunk(buf.into()))
            .map_err(gone)?;
    }
    if total != declared {
        return Err(format!("the image ended after {total} of {declared} bytes"));
    }
    ended.send(origin).map_err(gone)
}

/// Why the tap stopped when nobody reads what it sends.
fn gone<T>(_: T) -> String {
    "the upload no longer waits for the image".to_string()
}

/// The task: waits for the version, locks the model, starts the PUT of a new version's image
/// and hands all of it to the upload.
async fn lock_and_put(
    mut tapped: mpsc::Receiver<Tapped>,
    streamed: oneshot::Receiver<ZipOrigin>,
    db: Db,
    storage: Storage,
    model_id: i64,
    mut handoff: oneshot::Sender<Handoff>,
) {
    // While the first bytes arrive: the model locked (if it is free, see `prepare`), and what
    // the version's lookup needs read, so that a new version's PUT can start the moment the
    // image names it. The task ends as soon as the tap gives up or the upload is gone.
    let mut prepare = std::pin::pin!(prepare(&db, model_id));
    let mut prepared = None;
    let first = loop {
        tokio::select! {
            result = &mut prepare, if prepared.is_none() => prepared = Some(result),
            first = tapped.recv() => break first,
            () = handoff.closed() => return,
        }
    };
    let Some(Tapped::Version(version, len)) = first else {
        return; // a transaction, if any, rolls back as it drops
    };
    let prepared = match prepared {
        Some(prepared) => prepared,
        None => tokio::select! {
            prepared = &mut prepare => prepared,
            () = handoff.closed() => return,
        },
    };
    let prepared = match prepared {
        Ok(Some(prepared)) => prepared,
        Ok(None) => {
            tracing::debug!(model_id, "firmware_early_model_busy");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "firmware_early_lock_failed");
            return;
        }
    };
    let started = std::time::Instant::now();
    let image = TappedImage {
        len,
        tapped,
        streamed,
    };
    let locked = match look_up_and_put(prepared, &storage, version, image).await {
        Ok(locked) => locked,
        Err(e) => {
            tracing::warn!(error = %e, "firmware_early_lock_failed");
            return;
        }
    };
    super::upload::record_step("early_lock", started.elapsed());
    // If the upload is gone, the returned handoff is undone as it drops.
    let _ = handoff.send(Handoff(Some(locked)));
}

/// The model locked, and (read after the lock was granted, so they hold while it is held) its
/// stored versions and its keys queued for deletion.
struct Prepared {
    tx: Tx,
    model: fw::ModelFirmware,
    versions: Vec<String>,
    queued_deletions: Vec<String>,
}

/// `None` when another change of the model holds its lock: the early path does not wait for it
/// (a request whose body breaks off while queued behind that lock would hold a connection until
/// the lock is granted, as a query cannot be withdrawn by dropping it); the upload locks the
/// model the ordinary way once its body is in.
async fn prepare(db: &Db, model_id: i64) -> Result<Option<Prepared>, StoreError> {
    let mut tx = db.begin().await?;
    let Some(model) = fw::lock_model_if_free(&mut tx, model_id).await? else {
        return Ok(None);
    };
    let prefix = crate::layout::firmware_model_prefix(&model.code);
    let (versions, queued_deletions) =
        fw::versions_and_queued_deletions(&mut tx, model.id, &prefix).await?;
    Ok(Some(Prepared {
        tx,
        model,
        versions,
        queued_deletions,
    }))
}

/// Under the model lock: the version's row if it is stored, else the new version's keys' pending
/// deletions withdrawn (only if there are any: none can be queued while the lock is held) and
/// the image's PUT started.
async fn look_up_and_put(
    prepared: Prepared,
    storage: &Storage,
    version: FirmwareVersion,
    image: TappedImage,
) -> Result<Locked, StoreError> {
    let Prepared {
        mut tx,
        model,
        versions,
        queued_deletions,
    } = prepared;
    let (existing, put) = if versions.iter().any(|v| v == version.as_str()) {
        (fw::get(&mut tx, model.id, version.as_str()).await?, None)
    } else {
        let keys = firmware_keys(&model.code, version.as_str())?;
        if keys
            .iter()
            .any(|key| queued_deletions.iter().any(|queued| queued == key.as_str()))
        {
            // Architecture invariant (src/outbox.rs): before writing the keys.
            outbox::cancel_deletions(&mut tx, &keys).await?;
        }
        let key = firmware_key(&model.code, version.as_str(), Artifact::Bin)?;
        (None, Some(EarlyPut::start(storage, key, image)))
    };
    Ok(Locked {
        tx,
        model,
        version,
        existing,
        put,
        storage: storage.clone(),
    })
}

/// The image as the tap sends it: its declared size, its bytes, and its origin at the end.
struct TappedImage {
    len: u64,
    tapped: mpsc::Receiver<Tapped>,
    streamed: oneshot::Receiver<ZipOrigin>,
}

/// The image's PUT, started early. Its last byte is held back until the upload confirms that
/// it streamed exactly the validated image ([`Self::complete`]): a store commits a PUT only once
/// its declared length has arrived, so an image that is not the one validated (or one the tap
/// found broken at its end) can never be stored by it, not even by a store that commits after
/// its answer was lost, behind the ordinary PUT that replaces it.
pub struct EarlyPut {
    pub key: ObjectKey,
    put: tokio::task::JoinHandle<Result<(), crate::storage::StorageError>>,
    streamed: oneshot::Receiver<ZipOrigin>,
    /// Sent: the PUT may send its last byte; dropped: the PUT fails one byte short.
    release: oneshot::Sender<()>,
    /// Set when the PUT's body failed on our side (the tap failed, or the last byte was
    /// withheld), not the store's.
    body_failed: Arc<AtomicBool>,
}

/// Why an early PUT stored nothing usable.
#[derive(Debug)]
pub enum EarlyFailure {
    /// The tap stopped before the image's end (abandoned, or the stream was unreadable): the
    /// store was not at fault, the image can be PUT the ordinary way.
    Tap,
    /// The tap streamed another image than validation handed out (a ZIP whose first local
    /// header is not the entry its central directory names); the PUT was withheld.
    NotTheImage,
    /// The store failed.
    Store(StoreError),
}

impl EarlyPut {
    fn start(storage: &Storage, key: ObjectKey, image: TappedImage) -> Self {
        let TappedImage {
            len,
            tapped,
            streamed,
        } = image;
        let body_failed = Arc::new(AtomicBool::new(false));
        let (release, released) = oneshot::channel();
        let body = image_body(tapped, len, released, body_failed.clone());
        let storage = storage.clone();
        let put_key = key.clone();
        let put = tokio::spawn(async move { storage.put_sized(&put_key, len, body).await });
        EarlyPut {
            key,
            put,
            streamed,
            release,
            body_failed,
        }
    }

    /// Withholds the PUT's last byte, waits for the PUT to end (not aborting it: a store may
    /// still commit a PUT whose bytes all arrived, after a delete sent beside it) and deletes
    /// whatever it stored. The caller holds the model lock, so the key is this upload's.
    pub async fn discard(self, storage: &Storage) {
        let EarlyPut {
            key, put, release, ..
        } = self;
        drop(release);
        let _ = put.await;
        if let Err(e) = storage.delete(&key).await {
            tracing::warn!(object_key = %key, error = %e, "firmware_early_cleanup_failed");
        }
    }

    /// Completes the PUT if the tap streamed exactly `image`, the image validation handed out
    /// (the same place of the body, see [`ZipOrigin`]); otherwise withholds its last byte. Then
    /// waits for it: `Ok` when it stored `image`.
    pub async fn complete(self, image: &ZipOrigin) -> Result<(), EarlyFailure> {
        let EarlyPut {
            put,
            streamed,
            release,
            body_failed,
            ..
        } = self;
        // The tap sends the origin once the entry has ended well (declared size, CRC); without
        // it the streamed bytes are not known to be the image.
        let confirmed = match streamed.await {
            Ok(origin) if origin == *image => Ok(()),
            Ok(_) => Err(EarlyFailure::NotTheImage),
            Err(_) => Err(EarlyFailure::Tap),
        };
        if confirmed.is_ok() {
            // (If the PUT has failed already, nobody takes this; its result says so.)
            let _ = release.send(());
        } else {
            drop(release);
        }
        let stored = match put.await {
            Ok(result) => result.map_err(StoreError::from),
            Err(e) => Err(StoreError::Io(std::io::Error::other(format!(
                "the early image upload failed: {e}"
            )))),
        };
        match (confirmed, stored) {
            (Err(EarlyFailure::NotTheImage), _) => Err(EarlyFailure::NotTheImage),
            (Ok(()), Ok(())) => Ok(()),
            // The store failed first (then the tap stopped, as nobody read what it sent).
            (_, Err(e)) if !body_failed.load(Ordering::Acquire) => Err(EarlyFailure::Store(e)),
            _ => Err(EarlyFailure::Tap),
        }
    }
}

/// The PUT's body: the tap's chunks, `len` bytes in all, the last byte only once `release` is
/// sent (if it is dropped, the body fails one byte short). It fails if the tap fails or sends
/// more than `len` bytes (an HTTP client would cut a long body at the declared length and
/// complete the PUT); each failure is marked in `body_failed`.
fn image_body(
    tapped: mpsc::Receiver<Tapped>,
    len: u64,
    release: oneshot::Receiver<()>,
    body_failed: Arc<AtomicBool>,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    struct Body {
        tapped: mpsc::Receiver<Tapped>,
        /// Bytes not yet received from the tap.
        left: u64,
        /// The image's last byte, held back.
        held: Option<Bytes>,
        release: oneshot::Receiver<()>,
        body_failed: Arc<AtomicBool>,
    }
    let body = Body {
        tapped,
        left: len,
        held: None,
        release,
        body_failed,
    };
    futures::stream::unfold(Some(body), |state| async move {
        let mut body = state?;
        loop {
            let reason = if let Some(last) = body.held.take() {
                match (&mut body.release).await {
                    Ok(()) => return Some((Ok(last), Some(body))),
                    Err(_) => "the streamed image was not confirmed".to_string(),
                }
            } else {
                match body.tapped.recv().await? {
                    Tapped::Chunk(chunk) if chunk.len() as u64 > body.left => {
                        "the image is longer than declared".to_string()
                    }
                    Tapped::Chunk(mut chunk) => {
                        let n = chunk.len() as u64;
                        if n == body.left && n > 0 {
                            body.held = Some(chunk.split_off(chunk.len() - 1));
                        }
                        body.left -= n;
                        if chunk.is_empty() {
                            continue;
                        }
                        return Some((Ok(chunk), Some(body)));
                    }
                    Tapped::Failed(reason) => reason,
                    Tapped::Version(..) => "a second image version".to_string(),
                }
            };
            body.body_failed.store(true, Ordering::Release);
            return Some((Err(std::io::Error::other(reason)), None));
        }
    })
    .boxed()
}

/// The model lock and what the early path found, handed to the upload.
pub struct Locked {
    pub tx: Tx,
    pub model: fw::ModelFirmware,
    /// The version the tap read, looked up under the lock.
    pub version: FirmwareVersion,
    pub existing: Option<fw::FirmwareVersionRow>,
    /// The image's PUT, when the version is new.
    pub put: Option<EarlyPut>,
    storage: Storage,
}

impl Locked {
    /// Undoes what was started: the PUT discarded ([`EarlyPut::discard`]), then the
    /// transaction rolled back, so the delete runs under the model lock. The tap is cut off by
    /// then, so the PUT ends, at the latest by the store client's timeouts.
    async fn abandon(self) {
        if let Some(put) = self.put {
            put.discard(&self.storage).await;
        }
        drop(self.tx);
    }
}

/// A [`Locked`] on its way to the upload: undone if it is dropped before the upload took it
/// (the request ended while the body was arriving).
pub struct Handoff(Option<Locked>);

impl Drop for Handoff {
    fn drop(&mut self) {
        let Some(locked) = self.0.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(locked.abandon());
            }
            Err(_) => tracing::warn!("firmware_early_cleanup_without_runtime"),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    /// A body of `image` in two chunks split at `at`, with its release.
    async fn body_of(
        image: &[u8],
        at: usize,
    ) -> (
        BoxStream<'static, std::io::Result<Bytes>>,
        oneshot::Sender<()>,
    ) {
        let (events, tapped) = mpsc::channel(4);
        let (release, released) = oneshot::channel();
        let body = image_body(
            tapped,
            image.len() as u64,
            released,
            Arc::new(AtomicBool::new(false)),
        );
        let (first, second) = image.split_at(at);
        for chunk in [first, second] {
            events
                .send(Tapped::Chunk(Bytes::copy_from_slice(chunk)))
                .await
                .unwrap();
        }
        (body, release)
    }

    async fn sent_before_release(body: &mut BoxStream<'static, std::io::Result<Bytes>>) -> Vec<u8> {
        let mut sent = Vec::new();
        while let Some(Some(chunk)) = body.next().now_or_never() {
            sent.extend_from_slice(&chunk.unwrap());
        }
        sent
    }

    #[tokio::test]
    async fn the_last_byte_goes_only_once_released() {
        let image: Vec<u8> = (0..=255).collect();
        // The last chunk longer than a byte, and the last chunk the last byte alone.
        for at in [128, 255] {
            let (mut body, release) = body_of(&image, at).await;
            assert_eq!(sent_before_release(&mut body).await, image[..255]);
            release.send(()).unwrap();
            let last = body.next().await.unwrap().unwrap();
            assert_eq!(&last[..], &image[255..]);
        }
    }

    /// An HTTP client cuts a body longer than its declared length there and completes the
    /// request: the body fails instead of sending what would complete it.
    #[tokio::test]
    async fn a_body_longer_than_declared_fails_before_its_end() {
        let (events, tapped) = mpsc::channel(4);
        let (_release, released) = oneshot::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let mut body = image_body(tapped, 10, released, failed.clone());
        events
            .send(Tapped::Chunk(Bytes::from(vec![1u8; 11])))
            .await
            .unwrap();
        assert!(body.next().await.unwrap().is_err());
        assert!(body.next().await.is_none());
        assert!(failed.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn a_body_never_released_fails_one_byte_short() {
        let image: Vec<u8> = (0..=255).collect();
        let (mut body, release) = body_of(&image, 128).await;
        assert_eq!(sent_before_release(&mut body).await.len(), 255);
        drop(release);
        assert!(body.next().await.unwrap().is_err());
        assert!(body.next().await.is_none());
    }
}
