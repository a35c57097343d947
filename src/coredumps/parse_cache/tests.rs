//! Unit tests of the parse cache with the real firmware ELFs of the ESP test data
//! (`$IOTSUPPORT_TESTDATA`, else `../shared/testdata/esp`; skipped without it).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{LoadError, ParseCache};

/// Two real firmware ELFs with their SHA-256, or `None` (with a SKIP line).
fn elves() -> Option<[(Bytes, String); 2]> {
    let dir = match std::env::var_os("IOTSUPPORT_TESTDATA") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/esp"),
    };
    let read = |case: &str, file: &str| -> Option<(Bytes, String)> {
        let bytes = std::fs::read(dir.join("coredump").join(case).join(file)).ok()?;
        let sha = hex::encode(Sha256::digest(&bytes));
        Some((Bytes::from(bytes), sha))
    };
    let found = read("esp32_elf_crc32_abort", "esp32.elf")
        .zip(read("esp32c3_elf_crc32_abort", "esp32c3.elf"));
    if found.is_none() {
        println!("SKIP: ESP test data not found (set IOTSUPPORT_TESTDATA)");
    }
    found.map(|(a, b)| [a, b])
}

/// A fetch of `elf` that counts its calls and takes `delay`.
fn fetch(
    elf: &Bytes,
    calls: &Arc<AtomicUsize>,
    delay: Duration,
) -> impl FnOnce() -> futures::future::BoxFuture<'static, Result<Bytes, String>> {
    let (elf, calls) = (elf.clone(), Arc::clone(calls));
    move || {
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            Ok(elf)
        })
    }
}

#[tokio::test]
async fn a_build_is_fetched_and_loaded_once_however_many_parses_ask_at_once() {
    let Some([(elf, sha), _]) = elves() else {
        return;
    };
    let cache = ParseCache::new(64 << 20);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut asking = Vec::new();
    for _ in 0..8 {
        let (cache, fetch) = (
            Arc::clone(&cache),
            fetch(&elf, &calls, Duration::from_millis(50)),
        );
        let sha = sha.clone();
        asking.push(tokio::spawn(async move {
            cache.firmware(Some(&sha), fetch).await.map_err(|_| ())
        }));
    }
    let mut loaded = Vec::new();
    for a in asking {
        loaded.push(a.await.unwrap().unwrap());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(loaded.iter().all(|fw| Arc::ptr_eq(fw, &loaded[0])));
    assert_eq!(loaded[0].sha256_hex(), sha);
    // Later: from memory.
    let again = cache
        .firmware(
            Some(&sha.to_ascii_uppercase()),
            fetch(&elf, &calls, Duration::ZERO),
        )
        .await
        .map_err(|_| ())
        .unwrap();
    assert!(Arc::ptr_eq(&again, &loaded[0]));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let (entries, bytes) = cache.usage();
    assert_eq!(entries, 1);
    assert_eq!(bytes, loaded[0].approx_bytes() as u64);
}

#[tokio::test]
async fn the_least_recently_used_build_makes_room_and_one_larger_than_the_budget_is_not_kept() {
    let Some([(a, sha_a), (b, sha_b)]) = elves() else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    // Room for either build, not for both.
    let probe = ParseCache::new(u64::MAX);
    let size_a = probe
        .firmware(Some(&sha_a), fetch(&a, &calls, Duration::ZERO))
        .await
        .map_err(|_| ())
        .unwrap()
        .approx_bytes() as u64;
    let size_b = probe
        .firmware(Some(&sha_b), fetch(&b, &calls, Duration::ZERO))
        .await
        .map_err(|_| ())
        .unwrap()
        .approx_bytes() as u64;
    let cache = ParseCache::new(size_a.max(size_b) + 1);
    calls.store(0, Ordering::SeqCst);
    for (elf, sha) in [(&a, &sha_a), (&b, &sha_b), (&a, &sha_a)] {
        let fw = cache
            .firmware(Some(sha), fetch(elf, &calls, Duration::ZERO))
            .await
            .map_err(|_| ())
            .unwrap();
        assert_eq!(&fw.sha256_hex(), sha);
        let (entries, bytes) = cache.usage();
        assert_eq!(entries, 1);
        assert!(bytes <= size_a.max(size_b) + 1);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "each build evicted the other"
    );

    let tiny = ParseCache::new(1);
    for _ in 0..2 {
        tiny.firmware(Some(&sha_a), fetch(&a, &calls, Duration::ZERO))
            .await
            .map_err(|_| ())
            .unwrap();
    }
    assert_eq!(tiny.usage(), (0, 0));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "too large: loaded for each parse"
    );
}

#[tokio::test]
async fn an_elf_that_does_not_match_its_row_is_used_but_not_kept_and_failures_are_not_kept() {
    let Some([(a, sha_a), (_, sha_b)]) = elves() else {
        return;
    };
    let cache = ParseCache::new(64 << 20);
    let calls = Arc::new(AtomicUsize::new(0));
    // The row says b, the object holds a.
    for _ in 0..2 {
        let fw = cache
            .firmware(Some(&sha_b), fetch(&a, &calls, Duration::ZERO))
            .await
            .map_err(|_| ())
            .unwrap();
        assert_eq!(fw.sha256_hex(), sha_a);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(cache.usage(), (0, 0));

    // A failed fetch is the caller's error, and the next parse tries again.
    let failed = cache
        .firmware(Some(&sha_a), || async { Err::<Bytes, _>("store down") })
        .await;
    assert!(matches!(failed, Err(LoadError::Fetch("store down"))));
    let not_an_elf = cache
        .firmware(Some(&sha_a), || async {
            Ok::<_, String>(Bytes::from_static(b"not an ELF"))
        })
        .await;
    assert!(matches!(not_an_elf, Err(LoadError::Firmware(_))));
    cache
        .firmware(Some(&sha_a), fetch(&a, &calls, Duration::ZERO))
        .await
        .map_err(|_| ())
        .unwrap();
    assert_eq!(cache.usage().0, 1);
}

#[tokio::test]
async fn without_a_budget_or_a_recorded_hash_every_parse_loads_the_elf() {
    let Some([(a, sha_a), _]) = elves() else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let off = ParseCache::new(0);
    let on = ParseCache::new(64 << 20);
    for _ in 0..2 {
        off.firmware(Some(&sha_a), fetch(&a, &calls, Duration::ZERO))
            .await
            .map_err(|_| ())
            .unwrap();
        on.firmware(None, fetch(&a, &calls, Duration::ZERO))
            .await
            .map_err(|_| ())
            .unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(off.usage(), (0, 0));
    assert_eq!(on.usage(), (0, 0));
}
