//! A failure-injecting [`ObjectStorage`] wrapper for tests of the failure paths.
//!
//! Wrap the real store, then make chosen operations fail — always, a number of times, only for
//! keys containing some text, or (for reads and sized PUTs) after some bytes of the body, or
//! (sized PUTs) with the answer lost and the object committed late — and count the calls each
//! operation received. Used by integration tests to show that an S3 outage or a half-done
//! upload never leaves the database and the bucket disagreeing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::{ByteRange, ObjectInfo, ObjectKey, ObjectRead, ObjectStorage, Operation, StorageError};

/// One injected failure.
#[derive(Debug, Clone)]
pub struct Fault {
    pub operation: Operation,
    /// Only keys containing this text fail (all keys when `None`).
    pub key_contains: Option<String>,
    /// How many more calls fail (forever when `None`).
    pub remaining: Option<usize>,
    /// For `Get` (and `put_sized`): fail the body stream after this many bytes instead of
    /// failing the call.
    pub after_bytes: Option<u64>,
    /// For `put_sized`: the store receives the whole body but its answer is lost (the call
    /// fails), and it commits the object late, right after the next PUT of the key has
    /// succeeded. A body that ends short or fails is not committed.
    pub answer_lost: bool,
}

impl Fault {
    pub fn always(operation: Operation) -> Self {
        Fault {
            operation,
            key_contains: None,
            remaining: None,
            after_bytes: None,
            answer_lost: false,
        }
    }
    pub fn times(mut self, n: usize) -> Self {
        self.remaining = Some(n);
        self
    }
    pub fn for_keys_containing(mut self, text: impl Into<String>) -> Self {
        self.key_contains = Some(text.into());
        self
    }
    pub fn after_bytes(mut self, n: u64) -> Self {
        self.after_bytes = Some(n);
        self
    }
    pub fn answer_lost(mut self) -> Self {
        self.answer_lost = true;
        self
    }
}

#[derive(Default)]
struct State {
    faults: Vec<Fault>,
    calls: HashMap<Operation, usize>,
    gets: Vec<(String, Option<ByteRange>)>,
    /// Bodies received whose answer was lost, committed after the next PUT of their key.
    late: Vec<(String, Bytes)>,
    /// Bytes handed to the store by sized PUTs without a fault, per key.
    streamed: HashMap<String, u64>,
    /// How long a successful `put` waits before it answers (the object is stored already).
    slow_put_answers: Option<std::time::Duration>,
    /// How long the next whole (unranged) `get`s wait before they answer, and how many of them.
    slow_whole_gets: Option<(std::time::Duration, usize)>,
}

/// The wrapper. Cheap to clone; clones share faults and counters.
#[derive(Clone)]
pub struct FaultyStorage {
    inner: Arc<dyn ObjectStorage>,
    state: Arc<Mutex<State>>,
}

impl FaultyStorage {
    pub fn new(inner: Arc<dyn ObjectStorage>) -> Self {
        FaultyStorage {
            inner,
            state: Arc::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock can only come from a test assertion; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn inject(&self, fault: Fault) {
        self.state().faults.push(fault);
    }

    /// From now on a successful `put` answers only `after` it stored the object: a store slow to
    /// answer, during which the caller may give up.
    pub fn slow_put_answers(&self, after: std::time::Duration) {
        self.state().slow_put_answers = Some(after);
    }

    /// The next `times` whole (unranged) `get`s answer only `after`: a store slow to start
    /// sending an object.
    pub fn slow_whole_gets(&self, after: std::time::Duration, times: usize) {
        self.state().slow_whole_gets = Some((after, times));
    }

    /// Removes every injected fault: the store works again.
    pub fn heal(&self) {
        self.state().faults.clear();
    }

    pub fn calls(&self, operation: Operation) -> usize {
        self.state().calls.get(&operation).copied().unwrap_or(0)
    }

    /// Every `get` received, with its key and range.
    pub fn gets(&self) -> Vec<(String, Option<ByteRange>)> {
        self.state().gets.clone()
    }

    /// How many bytes of sized PUTs (`put_sized`) of `key` without a fault went to the store so
    /// far.
    pub fn streamed(&self, key: &str) -> u64 {
        self.state().streamed.get(key).copied().unwrap_or(0)
    }

    /// Counts the call and returns the fault that applies to it, consuming one use of it.
    fn hit(&self, operation: Operation, key: &str) -> Option<Fault> {
        let mut state = self.state();
        *state.calls.entry(operation).or_default() += 1;
        let index = state.faults.iter().position(|f| {
            f.operation == operation
                && f.remaining != Some(0)
                && f.key_contains.as_deref().is_none_or(|t| key.contains(t))
        })?;
        let fault = &mut state.faults[index];
        if let Some(n) = fault.remaining.as_mut() {
            *n -= 1;
        }
        Some(fault.clone())
    }

    /// After a PUT of `key` that succeeded: commits the bodies of that key whose answer was lost
    /// (see [`Fault::answer_lost`]), over it.
    async fn commit_late(
        &self,
        key: &ObjectKey,
        result: Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        result?;
        let late: Vec<Bytes> = {
            let mut state = self.state();
            let (now, later) = std::mem::take(&mut state.late)
                .into_iter()
                .partition(|(k, _)| k == key.as_str());
            state.late = later;
            now.into_iter().map(|(_, body)| body).collect()
        };
        for body in late {
            self.inner.put(key, body).await?;
        }
        Ok(())
    }

    /// Receives the whole of `body` and loses the answer (see [`Fault::answer_lost`]).
    async fn lose_answer(
        &self,
        key: &ObjectKey,
        len: u64,
        mut body: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<(), StorageError> {
        let mut received = Vec::new();
        while (received.len() as u64) < len {
            match body.next().await {
                Some(Ok(chunk)) => received.extend_from_slice(&chunk),
                // Broken off or short: the store commits nothing.
                Some(Err(_)) | None => return Err(injected(Operation::Put, key.as_str())),
            }
        }
        // A client sends the declared length and no more (hyper cuts a longer body there).
        received.truncate(usize::try_from(len).unwrap_or(usize::MAX));
        self.state()
            .late
            .push((key.to_string(), Bytes::from(received)));
        Err(injected(Operation::Put, key.as_str()))
    }

    fn guard(&self, operation: Operation, key: &str) -> Result<(), StorageError> {
        match self.hit(operation, key) {
            Some(_) => Err(injected(operation, key)),
            None => Ok(()),
        }
    }
}

/// `body`, failing with `fail()` in place of the chunk that would take it past `limit` bytes.
fn cut_after<E: Send + 'static>(
    body: BoxStream<'static, Result<Bytes, E>>,
    limit: u64,
    fail: impl Fn() -> E + Send + 'static,
) -> BoxStream<'static, Result<Bytes, E>> {
    let mut sent = 0u64;
    body.map(move |chunk| {
        let chunk = chunk?;
        if sent + chunk.len() as u64 > limit {
            return Err(fail());
        }
        sent += chunk.len() as u64;
        Ok(chunk)
    })
    .boxed()
}

fn injected(operation: Operation, key: &str) -> StorageError {
    StorageError::Unavailable {
        operation,
        key: key.to_string(),
        message: "injected fault".to_string(),
    }
}

#[async_trait::async_trait]
impl ObjectStorage for FaultyStorage {
    async fn put(&self, key: &ObjectKey, body: Bytes) -> Result<(), StorageError> {
        self.guard(Operation::Put, key.as_str())?;
        let result = self.inner.put(key, body).await;
        let slow = self.state().slow_put_answers;
        if let (Ok(()), Some(after)) = (&result, slow) {
            tokio::time::sleep(after).await;
        }
        self.commit_late(key, result).await
    }

    async fn put_stream(
        &self,
        key: &ObjectKey,
        body: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<u64, StorageError> {
        self.guard(Operation::Put, key.as_str())?;
        let written = self.inner.put_stream(key, body).await?;
        self.commit_late(key, Ok(())).await?;
        Ok(written)
    }

    async fn put_sized(
        &self,
        key: &ObjectKey,
        len: u64,
        body: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<(), StorageError> {
        // `after_bytes` on a put cuts its body there: the store sees a request that breaks off.
        let limit = match self.hit(Operation::Put, key.as_str()) {
            Some(Fault {
                answer_lost: true, ..
            }) => return self.lose_answer(key, len, body).await,
            Some(Fault {
                after_bytes: Some(n),
                ..
            }) => n,
            Some(_) => return Err(injected(Operation::Put, key.as_str())),
            None => {
                let state = self.state.clone();
                let owned_key = key.to_string();
                let body = body
                    .inspect(move |chunk| {
                        if let Ok(chunk) = chunk {
                            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                            *state.streamed.entry(owned_key.clone()).or_default() +=
                                chunk.len() as u64;
                        }
                    })
                    .boxed();
                let result = self.inner.put_sized(key, len, body).await;
                return self.commit_late(key, result).await;
            }
        };
        let body = cut_after(body, limit, || std::io::Error::other("injected fault"));
        self.inner.put_sized(key, len, body).await
    }

    fn streams_sized_puts(&self) -> bool {
        self.inner.streams_sized_puts()
    }

    async fn get(
        &self,
        key: &ObjectKey,
        range: Option<ByteRange>,
    ) -> Result<ObjectRead, StorageError> {
        let slow = {
            let mut state = self.state();
            state.gets.push((key.to_string(), range));
            match &mut state.slow_whole_gets {
                Some((after, times)) if range.is_none() && *times > 0 => {
                    *times -= 1;
                    Some(*after)
                }
                _ => None,
            }
        };
        if let Some(after) = slow {
            tokio::time::sleep(after).await;
        }
        let fault = self.hit(Operation::Get, key.as_str());
        let limit = match fault {
            Some(Fault {
                after_bytes: Some(n),
                ..
            }) => n,
            Some(_) => return Err(injected(Operation::Get, key.as_str())),
            None => return self.inner.get(key, range).await,
        };
        let mut read = self.inner.get(key, range).await?;
        let owned_key = key.to_string();
        read.body = cut_after(read.body, limit, move || {
            injected(Operation::Get, &owned_key)
        });
        Ok(read)
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectInfo, StorageError> {
        self.guard(Operation::Head, key.as_str())?;
        self.inner.head(key).await
    }

    async fn copy(&self, from: &ObjectKey, to: &ObjectKey) -> Result<(), StorageError> {
        self.guard(Operation::Copy, from.as_str())?;
        self.inner.copy(from, to).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.guard(Operation::Delete, key.as_str())?;
        self.inner.delete(key).await
    }

    async fn delete_many(&self, keys: &[ObjectKey]) -> Vec<Result<(), StorageError>> {
        // Faults apply per key, so a test can make a batch fail half-way.
        let allowed: Vec<Result<(), StorageError>> = keys
            .iter()
            .map(|k| self.guard(Operation::Delete, k.as_str()))
            .collect();
        let to_delete: Vec<ObjectKey> = keys
            .iter()
            .zip(&allowed)
            .filter(|(_, ok)| ok.is_ok())
            .map(|(k, _)| k.clone())
            .collect();
        let mut deleted = self.inner.delete_many(&to_delete).await.into_iter();
        allowed
            .into_iter()
            .map(|ok| match ok {
                Ok(()) => deleted.next().unwrap_or(Ok(())),
                Err(e) => Err(e),
            })
            .collect()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        self.guard(Operation::List, prefix)?;
        self.inner.list(prefix).await
    }

    async fn list_counted(
        &self,
        prefix: &str,
        listed: &(dyn Fn(usize) + Send + Sync),
    ) -> Result<Vec<ObjectInfo>, StorageError> {
        self.guard(Operation::List, prefix)?;
        self.inner.list_counted(prefix, listed).await
    }

    async fn check(&self) -> Result<(), StorageError> {
        self.guard(Operation::Check, "")?;
        self.inner.check().await
    }

    async fn answers(&self) -> Result<(), StorageError> {
        self.guard(Operation::Check, "")?;
        self.inner.answers().await
    }
}
