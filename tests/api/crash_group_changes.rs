//! How crash groups follow their dumps: a reparse whose signature changed moves the dump (old
//! group counted down, new one up), one whose did not changes nothing, one that fails leaves the
//! grouping; retention, admin deletes and device deletes leave the counts (SPEC §15: "a deleted
//! dump leaves the counts").

use serde_json::{json, Value};

use crate::coredumps::*;
use crate::crash_support::*;
use crate::fleet::device_of;
use crate::helpers::*;

async fn reparse_and_wait(app: &TestApp, device: &TestDevice, id: i64) -> Value {
    let (status, body) = app.reparse_coredump(device.id, id).await;
    assert_eq!(status, 202, "{body}");
    settled(app, device, id, std::time::Duration::from_secs(60)).await
}

#[tokio::test]
async fn a_reparse_whose_signature_changed_moves_the_dump_and_one_whose_did_not_changes_nothing() {
    let Some(crashes) = crashes() else { return };
    for_each_stack("crash_groups_reparse", &[], async |app| {
        let d1 = model_with_device(app, "sensor").await;
        let d2 = device_of(app, d1.model_id).await;
        store_builds(app, "sensor", &crashes).await;
        let x = crash_and_parse(app, &d1, &crashes.abort_v1).await;
        let y = crash_and_parse(app, &d1, &crashes.abort_v1).await;
        let z = crash_and_parse(app, &d2, &crashes.abort_v1).await;
        let (x, y, z) = (
            x["id"].as_i64().unwrap(),
            y["id"].as_i64().unwrap(),
            z["id"].as_i64().unwrap(),
        );
        let abort = group_of(app, &d1, x).await.as_i64().unwrap();
        let events_before = iotsupport::events::newest_id(app.db()).await.unwrap();

        // The same result again: nothing moves, no group event.
        let again = reparse_and_wait(app, &d1, x).await;
        assert_eq!(again["crash_group_id"], abort);
        let parsed_events = events_of(app, "coredump_parsed").await;
        assert_eq!(parsed_events.last().unwrap()["crash_group_id"], abort);
        assert_eq!(group(app, abort).await["coredump_count"], 3);
        let group_events = iotsupport::events::after(
            app.db(),
            &mut iotsupport::events::Cursor::new(events_before),
            1000,
        )
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind.starts_with("crash_group"))
        .count();
        assert_eq!(group_events, 0);

        // Version 1.0.0's ELF replaced by another program's: the same dump symbolises to other
        // functions, so it signs differently.
        put_elf(app, "sensor", "1.0.0", crashes.store.elf.clone()).await;
        let moved = reparse_and_wait(app, &d1, x).await;
        assert_eq!(moved["parse_status"], "PARSED", "{moved}");
        let other = moved["crash_group_id"].as_i64().unwrap();
        assert_ne!(other, abort);
        let (a, o) = (group(app, abort).await, group(app, other).await);
        assert_eq!(
            (a["coredump_count"].as_i64(), a["device_count"].as_i64()),
            (Some(2), Some(2))
        );
        assert_eq!(
            (o["coredump_count"].as_i64(), o["device_count"].as_i64()),
            (Some(1), Some(1))
        );
        assert_eq!(o["firmware_versions"], json!(["1.0.0"]));
        let moved_events = events_of(app, "crash_group_updated").await;
        assert_eq!(moved_events.last().unwrap()["id"], abort);
        assert_eq!(
            events_of(app, "crash_group_created").await.last().unwrap()["id"],
            other
        );
        assert_counts_match_ledger(app).await;

        // d1's last dump of the abort group moves too: d1 leaves it, d2 stays.
        reparse_and_wait(app, &d1, y).await;
        let a = group(app, abort).await;
        assert_eq!(
            (a["coredump_count"].as_i64(), a["device_count"].as_i64()),
            (Some(1), Some(1))
        );
        assert_eq!(a["firmware_version_counts"][0]["device_count"], 1);
        let o = group(app, other).await;
        assert_eq!(
            (o["coredump_count"].as_i64(), o["device_count"].as_i64()),
            (Some(2), Some(1))
        );
        // And the group's last one: an emptied group keeps its status and its last seen times.
        reparse_and_wait(app, &d2, z).await;
        let a = group(app, abort).await;
        assert_eq!(
            (a["coredump_count"].as_i64(), a["device_count"].as_i64()),
            (Some(0), Some(0))
        );
        assert_eq!(a["firmware_versions"], json!([]));
        assert_eq!(a["coredumps"], json!([]));
        assert_eq!(a["status"], "open");
        assert!(a["last_seen_at"].is_string(), "{a}");
        assert_counts_match_ledger(app).await;

        // The right ELF again: back to the abort group.
        put_elf(app, "sensor", "1.0.0", crashes.abort_v1.elf.clone()).await;
        let back = reparse_and_wait(app, &d1, x).await;
        assert_eq!(back["crash_group_id"], abort);
        assert_eq!(group(app, abort).await["coredump_count"], 1);
        assert_eq!(group(app, other).await["coredump_count"], 2);

        // A reparse that fails (the ELF is gone) leaves the dump in its group.
        let elf =
            iotsupport::storage::ObjectKey::parse("firmware/sensor/1.0.0/firmware.elf").unwrap();
        app.state.storage.delete(&elf).await.unwrap();
        let failed = reparse_and_wait(app, &d1, x).await;
        assert_eq!(failed["parse_status"], "ERROR", "{failed}");
        assert_eq!(failed["crash_group_id"], abort);
        let parsed_events = events_of(app, "coredump_parsed").await;
        assert_eq!(parsed_events.last().unwrap()["crash_group_id"], abort);
        assert_eq!(group(app, abort).await["coredump_count"], 1);
        assert_counts_match_ledger(app).await;
    })
    .await;
}

#[tokio::test]
async fn retention_admin_deletes_and_device_deletes_leave_the_groups_counts() {
    let Some(crashes) = crashes() else { return };
    TestApp::builder("crash_groups_retention")
        .env("MAX_COREDUMPS", "2")
        .for_each_stack(async |app| {
            let d1 = model_with_device(app, "sensor").await;
            let d2 = device_of(app, d1.model_id).await;
            store_builds(app, "sensor", &crashes).await;
            let mut ids = Vec::new();
            for crash in [
                &crashes.abort_v1,
                &crashes.abort_v2,
                &crashes.abort_v1,
                &crashes.abort_v2,
            ] {
                ids.push(
                    crash_and_parse(app, &d1, crash).await["id"]
                        .as_i64()
                        .unwrap(),
                );
            }
            let kept = crash_and_parse(app, &d2, &crashes.abort_v1).await;
            let id = kept["crash_group_id"].as_i64().unwrap();
            // Retention kept two of d1's four dumps; the group counts all five.
            let (_, listed) = app.list_coredumps(d1.id).await;
            assert_eq!(listed["count"], 2, "{listed}");
            let g = group(app, id).await;
            assert_eq!(g["coredump_count"], 5);
            assert_eq!(g["device_count"], 2);
            assert_eq!(g["stored_coredump_count"], 3);
            assert_eq!(g["coredumps"].as_array().unwrap().len(), 3);
            let counts = &g["firmware_version_counts"];
            assert_eq!(
                (
                    counts[0]["coredump_count"].as_i64(),
                    counts[1]["coredump_count"].as_i64()
                ),
                (Some(3), Some(2))
            );

            // An admin deletes one dump, then a whole device: the counts stay.
            let (status, _) = app
                .delete_coredump(d2.id, kept["id"].as_i64().unwrap())
                .await;
            assert_eq!(status, 204);
            let (status, _) = app.delete_device(d1.id).await;
            assert_eq!(status, 204);
            let g = group(app, id).await;
            assert_eq!(
                (g["coredump_count"].as_i64(), g["device_count"].as_i64()),
                (Some(5), Some(2))
            );
            assert_eq!(g["stored_coredump_count"], 0);
            assert_eq!(g["coredumps"], json!([]));

            // A new dump of the same crash still joins it, as a device it has seen.
            let last = crash_and_parse(app, &d2, &crashes.abort_v2).await;
            assert_eq!(last["crash_group_id"], id);
            let g = group(app, id).await;
            assert_eq!(
                (g["coredump_count"].as_i64(), g["device_count"].as_i64()),
                (Some(6), Some(2))
            );
            assert_counts_match_ledger(app).await;
        })
        .await;
}
