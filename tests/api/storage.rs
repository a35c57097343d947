//! The object storage contract, run against every real backend available: the local directory,
//! moto, and Garage when `scripts/test.sh` found a `garage` binary.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use iotsupport::config::{S3Config, Secret};
use iotsupport::storage::backend::ObjectStoreBackend;
use iotsupport::storage::faulty::{Fault, FaultyStorage};
use iotsupport::storage::{bucket, ByteRange, ObjectKey, ObjectStorage, Operation, Storage};
use std::time::Duration;

use crate::helpers::*;

fn s3_config(endpoint: &str, key: &str, secret: &str) -> S3Config {
    S3Config {
        endpoint_url: endpoint.to_string(),
        access_key_id: Some(Secret::new(key)),
        secret_access_key: Some(Secret::new(secret)),
        bucket: unique_bucket(),
        region: "us-east-1".into(),
        request_timeout: Duration::from_secs(5),
    }
}

/// Every backend to test, with a name for messages. The temp dir keeps the local one alive.
async fn backends(test: &str) -> (Vec<(&'static str, Storage)>, tempfile::TempDir) {
    let dir = tempfile::TempDir::new().unwrap();
    let mut stores: Vec<(&'static str, Storage)> = vec![(
        "local",
        Arc::new(ObjectStoreBackend::local(&dir.path().join("objects")).unwrap()),
    )];
    if let Some((_, endpoint)) = production_services(test) {
        let config = s3_config(&endpoint, "test", "test");
        assert!(
            bucket::ensure_bucket(&config).await.unwrap(),
            "bucket is new"
        );
        assert!(
            !bucket::ensure_bucket(&config).await.unwrap(),
            "second call finds it"
        );
        stores.push(("moto", Arc::new(ObjectStoreBackend::s3(&config).unwrap())));
    }
    if let (Ok(endpoint), Ok(key), Ok(secret)) = (
        std::env::var("IOTSUPPORT_TEST_GARAGE_ENDPOINT"),
        std::env::var("IOTSUPPORT_TEST_GARAGE_KEY_ID"),
        std::env::var("IOTSUPPORT_TEST_GARAGE_SECRET"),
    ) {
        let config = s3_config(&endpoint, &key, &secret);
        bucket::ensure_bucket(&config).await.unwrap();
        stores.push(("garage", Arc::new(ObjectStoreBackend::s3(&config).unwrap())));
    }
    (stores, dir)
}

fn key(s: &str) -> ObjectKey {
    ObjectKey::parse(s).unwrap()
}

fn sample(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn put_get_head_and_ranged_get_return_what_was_stored() {
    let (stores, _dir) = backends("storage_roundtrip").await;
    for (name, store) in stores {
        let k = key("firmware/model_a/1.0.0/firmware.bin");
        let data = sample(10_000);
        store.put(&k, data.clone()).await.unwrap();

        let head = store.head(&k).await.unwrap();
        assert_eq!(head.size, 10_000, "{name}");
        assert_eq!(head.key, k.as_str());

        let read = store.get(&k, None).await.unwrap();
        assert_eq!(read.range, 0..10_000);
        assert_eq!(read.bytes().await.unwrap(), data, "{name}");

        let read = store
            .get(
                &k,
                Some(ByteRange::Bounded {
                    start: 100,
                    end: 300,
                }),
            )
            .await
            .unwrap();
        assert_eq!(read.range, 100..300, "{name}");
        assert_eq!(
            read.info.size, 10_000,
            "{name}: total size known from a ranged get"
        );
        assert_eq!(read.bytes().await.unwrap(), data.slice(100..300), "{name}");

        let read = store
            .get(&k, Some(ByteRange::From { start: 9_990 }))
            .await
            .unwrap();
        assert_eq!(read.bytes().await.unwrap(), data.slice(9_990..), "{name}");

        let read = store
            .get(&k, Some(ByteRange::Suffix { len: 16 }))
            .await
            .unwrap();
        assert_eq!(read.range, 9_984..10_000, "{name}");
        assert_eq!(read.bytes().await.unwrap(), data.slice(9_984..), "{name}");

        let err = store
            .get(&k, Some(ByteRange::From { start: 20_000 }))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                iotsupport::storage::StorageError::RangeNotSatisfiable { size: 10_000, .. }
            ),
            "{name}: {err:?}"
        );

        // An empty suffix selects nothing: unsatisfiable, not an empty 206.
        let err = store
            .get(&k, Some(ByteRange::Suffix { len: 0 }))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                iotsupport::storage::StorageError::RangeNotSatisfiable { size: 10_000, .. }
            ),
            "{name}: {err:?}"
        );
    }
}

#[tokio::test]
async fn streamed_puts_of_many_parts_read_back_intact() {
    let (stores, _dir) = backends("storage_stream").await;
    for (name, store) in stores {
        let k = key("firmware/model_a/2.0.0/firmware.elf");
        // 20 MiB in 1 MiB chunks: more than two multipart parts on S3.
        let chunks: Vec<std::io::Result<Bytes>> = (0..20)
            .map(|i| Ok(Bytes::from(vec![i as u8; 1 << 20])))
            .collect();
        let written = store
            .put_stream(&k, futures::stream::iter(chunks).boxed())
            .await
            .unwrap();
        assert_eq!(written, 20 << 20, "{name}");
        let read = store
            .get(
                &k,
                Some(ByteRange::Bounded {
                    start: (5 << 20) - 1,
                    end: (5 << 20) + 1,
                }),
            )
            .await
            .unwrap();
        assert_eq!(read.bytes().await.unwrap().as_ref(), &[4u8, 5u8], "{name}");
        assert_eq!(store.head(&k).await.unwrap().size, 20 << 20);
    }
}

#[tokio::test]
async fn a_failing_stream_leaves_no_object_behind() {
    let (stores, _dir) = backends("storage_stream_abort").await;
    for (name, store) in stores {
        let k = key("firmware/model_a/3.0.0/firmware.map");
        let chunks: Vec<std::io::Result<Bytes>> = vec![
            Ok(Bytes::from(vec![1u8; 6 << 20])),
            Err(std::io::Error::other("client went away")),
        ];
        let err = store
            .put_stream(&k, futures::stream::iter(chunks).boxed())
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{name}: {err:?}");
        assert!(
            store.head(&k).await.unwrap_err().is_not_found(),
            "{name}: partial object visible"
        );
    }
}

#[tokio::test]
async fn missing_objects_are_not_found_and_deleting_them_succeeds() {
    let (stores, _dir) = backends("storage_missing").await;
    for (name, store) in stores {
        let k = key("coredumps/abcd2345/999.dmp");
        assert!(store.head(&k).await.unwrap_err().is_not_found(), "{name}");
        assert!(
            store.get(&k, None).await.unwrap_err().is_not_found(),
            "{name}"
        );
        store.delete(&k).await.unwrap();
        assert!(
            store
                .delete_many(std::slice::from_ref(&k))
                .await
                .into_iter()
                .all(|r| r.is_ok()),
            "{name}"
        );
    }
}

#[tokio::test]
async fn list_by_prefix_and_batch_delete() {
    let (stores, _dir) = backends("storage_list").await;
    for (name, store) in stores {
        let keys: Vec<ObjectKey> = (0..5)
            .map(|i| key(&format!("coredumps/dev{i}aaaa/{i}.dmp")))
            .chain([
                key("firmware/m/1/firmware.bin"),
                key("firmware/m/10/firmware.bin"),
            ])
            .collect();
        for k in &keys {
            store.put(k, Bytes::from_static(b"x")).await.unwrap();
        }
        let mut listed: Vec<String> = store
            .list("coredumps")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        listed.sort();
        assert_eq!(listed.len(), 5, "{name}: {listed:?}");
        // Path-segment semantics: "firmware/m/1" does not match "firmware/m/10/…".
        let listed = store.list("firmware/m/1").await.unwrap();
        assert_eq!(listed.len(), 1, "{name}: {listed:?}");

        let results = store.delete_many(&keys).await;
        assert_eq!(results.len(), keys.len());
        assert!(results.iter().all(|r| r.is_ok()), "{name}: {results:?}");
        assert!(store.list("coredumps").await.unwrap().is_empty(), "{name}");
        assert!(store.list("firmware").await.unwrap().is_empty(), "{name}");
    }
}

#[tokio::test]
async fn an_unreachable_s3_server_is_unavailable_not_missing() {
    let config = s3_config(&format!("http://127.0.0.1:{}", free_port()), "k", "s");
    let config = S3Config {
        request_timeout: Duration::from_secs(2),
        ..config
    };
    let store = ObjectStoreBackend::s3(&config).unwrap();
    let k = key("coredumps/abcd2345/1.dmp");
    for err in [
        store.check().await.unwrap_err(),
        store.head(&k).await.unwrap_err(),
        store.get(&k, None).await.err().unwrap(),
        store.put(&k, Bytes::from_static(b"x")).await.unwrap_err(),
        store.delete(&k).await.unwrap_err(),
    ] {
        assert!(err.is_transient() && !err.is_not_found(), "{err:?}");
    }
    assert!(bucket::ensure_bucket(&config)
        .await
        .unwrap_err()
        .is_transient());
}

#[tokio::test]
async fn injected_faults_hit_only_what_they_target_and_heal() {
    let dir = tempfile::TempDir::new().unwrap();
    let real: Storage = Arc::new(ObjectStoreBackend::local(dir.path()).unwrap());
    let faulty = FaultyStorage::new(real);
    let (a, b) = (key("x/a.bin"), key("x/b.bin"));
    faulty.inject(
        Fault::always(Operation::Put)
            .for_keys_containing("b.bin")
            .times(1),
    );
    faulty.put(&a, Bytes::from_static(b"aaaa")).await.unwrap();
    assert!(faulty
        .put(&b, Bytes::from_static(b"bbbb"))
        .await
        .unwrap_err()
        .is_transient());
    faulty.put(&b, Bytes::from_static(b"bbbb")).await.unwrap();
    assert_eq!(faulty.calls(Operation::Put), 3);

    // A read that breaks half-way through the body.
    faulty.inject(Fault::always(Operation::Get).after_bytes(2));
    let read = faulty.get(&a, None).await.unwrap();
    assert!(read.bytes().await.unwrap_err().is_transient());
    faulty.heal();
    assert_eq!(
        faulty
            .get(&a, None)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        b"aaaa"
    );

    // A batch delete that fails for one key only.
    faulty.inject(Fault::always(Operation::Delete).for_keys_containing("a.bin"));
    let results = faulty.delete_many(&[a.clone(), b.clone()]).await;
    assert!(results[0].is_err() && results[1].is_ok());
    assert!(faulty.head(&a).await.is_ok());
    assert!(faulty.head(&b).await.unwrap_err().is_not_found());
    assert_eq!(faulty.gets().len(), 2);
}
