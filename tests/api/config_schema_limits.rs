//! Expensive config schemas: a schema whose `$ref`s fan out is refused when a model's schema is
//! set; validating a config never runs inside a transaction or on the async workers, and never
//! longer than `CONFIG_VALIDATION_TIMEOUT_SECONDS`; a model whose stored schema is beyond the
//! limits (stored before them, or written to the database directly) stalls nothing; a schema that
//! changes while a config is validated against its predecessor is a 409; and readyz notices when
//! writers cannot get the database.

use std::time::Duration;

use serde_json::{json, Value};

use crate::coredumps::count;
use crate::fleet::{create_model, device_of};
use crate::helpers::*;

/// `depth` levels of definitions, each an `allOf` of `fan` references to the next: small text,
/// `fan^depth` subschemas once the references are followed.
fn fan_out_schema(depth: usize, fan: usize) -> String {
    let mut defs = serde_json::Map::new();
    for level in 0..depth {
        let next = format!("#/$defs/l{}", level + 1);
        let refs: Vec<Value> = (0..fan).map(|_| json!({ "$ref": next })).collect();
        defs.insert(format!("l{level}"), json!({ "allOf": refs }));
    }
    defs.insert(format!("l{depth}"), json!({"type": "object"}));
    json!({"$defs": defs, "$ref": "#/$defs/l0"}).to_string()
}

/// A schema within the limits whose validation is slow for a long array: every sample is checked
/// against `checks` subschemas.
fn many_checks_schema(checks: i64) -> String {
    let all: Vec<Value> = (0..checks).map(|i| json!({ "minimum": -i })).collect();
    json!({
        "type": "object",
        "properties": {"samples": {"type": "array", "items": {"allOf": all}}}
    })
    .to_string()
}

/// A config with `n` samples, valid against [`many_checks_schema`].
fn samples_config(n: usize) -> String {
    json!({ "samples": vec![0; n] }).to_string()
}

/// Writes a schema straight into the database, past the checks of the API.
async fn store_schema_directly(app: &TestApp, model: i64, schema: &str) {
    let sql = "UPDATE device_models SET config_schema = $1 WHERE id = $2";
    iotsupport::on_pool!(app.db(), |p| sqlx::query(sql)
        .bind(schema)
        .bind(model)
        .execute(p)
        .await
        .map(|_| ()))
    .unwrap();
}

/// The start of an answer, for assertion messages (a created device repeats its whole config).
fn brief(body: &Value) -> String {
    body.to_string().chars().take(300).collect()
}

fn assert_refused_with(status: u16, body: &Value, needle: &str) {
    assert_eq!(status, 400, "{}", brief(body));
    assert_eq!(body["code"], "VALIDATION_FAILED", "{}", brief(body));
    let error = body["error"].as_str().unwrap();
    assert!(error.contains(needle), "{needle:?} not in {error:?}");
}

#[tokio::test]
async fn schemas_beyond_the_limits_are_refused_when_a_model_is_created_or_updated() {
    for_each_stack("schema_limits_at_set_time", &[], async |app| {
        let nested = (0..40).fold(
            json!({"type": "string"}),
            |inner, _| json!({"type": "object", "properties": {"x": inner}}),
        );
        let refused = [
            (
                fan_out_schema(5, 10),
                "config_schema: $ref expansion exceeds 10000",
            ),
            (
                fan_out_schema(14, 10),
                "config_schema: $ref expansion exceeds 10000",
            ),
            (
                json!({"description": "x".repeat(70_000)}).to_string(),
                "config_schema: larger than 65536 bytes",
            ),
            (nested.to_string(), "config_schema: nested deeper than 32"),
            (
                json!({"$defs": {"node": {"properties": {"child": {"$ref": "#/$defs/node"}}}},
                       "$ref": "#/$defs/node"})
                .to_string(),
                "config_schema: $ref cycle",
            ),
            (
                json!({"$ref": "https://example.com/schema.json"}).to_string(),
                "config_schema: $ref \"https://example.com/schema.json\" is not local",
            ),
            (
                json!({"$ref": "#/$defs/missing"}).to_string(),
                "config_schema: $ref \"#/$defs/missing\" does not resolve",
            ),
        ];
        for (schema, needle) in &refused {
            let (status, body) = app.create_model("sensor", "Sensor", Some(schema)).await;
            assert_refused_with(status, &body, needle);
        }
        assert_eq!(count(app, "device_models").await, 0);

        // What real schemas look like passes: shared definitions referenced from many places.
        let fine = fan_out_schema(3, 10);
        let id = create_model(app, "sensor", Some(&fine)).await;
        let device = device_of(app, id).await;
        let (status, body) = app
            .update_device(device.id, json!({"config": "{\"a\": 1}"}))
            .await;
        assert_eq!(status, 200, "{body}");

        let (status, body) = app
            .update_model(id, json!({"config_schema": fan_out_schema(6, 10)}))
            .await;
        assert_refused_with(status, &body, "$ref expansion exceeds");
        assert_eq!(app.get_model(id).await.1["config_schema"], fine.as_str());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_schema_beyond_the_limits_stalls_no_other_request() {
    for_each_stack("stored_pathological_schema", &[], async |app| {
        let slow_model = create_model(app, "slow", None).await;
        let slow_device = device_of(app, slow_model).await;
        let other_model = create_model(app, "other", None).await;
        let other_device = device_of(app, other_model).await;
        // Depth 9 ran for 16 s on a release build of the unbounded validation; depth 14 forever.
        store_schema_directly(app, slow_model, &fan_out_schema(9, 10)).await;

        let within = Duration::from_secs(10);
        let slow = app.update_device(slow_device.id, json!({"config": "{\"a\": 1}"}));
        let others = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let update = tokio::time::timeout(
                within,
                app.update_device(other_device.id, json!({"config": "{\"b\": 2}"})),
            )
            .await
            .expect("another model's device update answers");
            let ready = tokio::time::timeout(within, app.readyz())
                .await
                .expect("readyz answers");
            (update, ready)
        };
        let (slow, (update, ready)) = tokio::join!(tokio::time::timeout(within, slow), others);
        assert_eq!(update.0, 200, "{}", update.1);
        assert_eq!(ready.0, 200, "{}", ready.1);
        let (status, body) = slow.expect("the update against the stored schema answers");
        assert_refused_with(status, &body, "$ref expansion exceeds 10000");
        assert!(
            body["error"].as_str().unwrap().contains("DeviceModel slow"),
            "names the model whose schema to replace: {body}"
        );
        assert_eq!(app.get_device(slow_device.id).await.1["config"], "{}");

        // Replacing the schema through the API makes the model usable again.
        let (status, _) = app
            .update_model(
                slow_model,
                json!({"config_schema": "{\"type\": \"object\"}"}),
            )
            .await;
        assert_eq!(status, 200);
        let (status, body) = app
            .update_device(slow_device.id, json!({"config": "{\"a\": 1}"}))
            .await;
        assert_eq!(status, 200, "{body}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validation_over_its_budget_is_a_400_and_holds_no_transaction() {
    TestApp::builder("validation_budget")
        .env("CONFIG_VALIDATION_TIMEOUT_SECONDS", "0.2")
        .for_each_stack(async |app| {
            let slow_model = create_model(app, "slow", Some(&many_checks_schema(2000))).await;
            let other_model = create_model(app, "other", None).await;
            let other_device = device_of(app, other_model).await;

            let within = Duration::from_secs(10);
            let (status, body) = tokio::time::timeout(
                within,
                app.create_device(slow_model, &samples_config(20_000)),
            )
            .await
            .expect("the create answers");
            assert_refused_with(status, &body, "took longer than 0.2 s");
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("CONFIG_VALIDATION_TIMEOUT_SECONDS"),
                "{body}"
            );
            // The validation may still be running on its thread; it holds no connection and no
            // transaction, so writes go on.
            let (status, body) = tokio::time::timeout(
                within,
                app.update_device(other_device.id, json!({"config": "{\"b\": 2}"})),
            )
            .await
            .expect("a write while the validation runs");
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                count(app, "devices").await,
                1,
                "nothing stored for the refused one"
            );

            // A small config against the same schema is well within the budget.
            let (status, body) = app.create_device(slow_model, &samples_config(3)).await;
            assert_eq!(status, 201, "{body}");
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_changed_during_validation_makes_the_device_write_a_409() {
    TestApp::builder("schema_changed_during_validation")
        .env("CONFIG_VALIDATION_TIMEOUT_SECONDS", "120")
        .for_each_stack(async |app| {
            let model = create_model(app, "slow", Some(&many_checks_schema(2000))).await;
            // Long enough (seconds on a debug build) for the schema to change meanwhile.
            let config = samples_config(20_000);
            let create = app.create_device(model, &config);
            let change = async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                app.update_model(
                    model,
                    json!({"config_schema": "{\"required\": [\"samples\"]}"}),
                )
                .await
            };
            let ((status, body), (changed, _)) = tokio::join!(create, change);
            assert_eq!(changed, 200);
            assert_eq!(status, 409, "{}", brief(&body));
            assert_eq!(body["code"], "CONFLICT");
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("changed while the config was being validated"),
                "{body}"
            );
            assert_eq!(count(app, "devices").await, 0);
            // Retried, it is validated against the new schema.
            let (status, body) = app.create_device(model, &config).await;
            assert_eq!(status, 201, "{}", brief(&body));
        })
        .await;
}

#[tokio::test]
async fn readyz_is_503_while_writers_cannot_get_the_database() {
    for_each_stack("readyz_write_probe", &[], async |app| {
        // A writer that holds on: on SQLite every other writer waits for it.
        let held = app.db().begin().await.unwrap();
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), app.readyz())
            .await
            .expect("readyz answers while a writer holds the database");
        match app.stack {
            Stack::Embedded => {
                assert_eq!(status, 503, "{body}");
                assert_eq!(body["code"], "SERVICE_UNAVAILABLE");
                let database = body["details"]["database"].as_str().unwrap();
                assert!(database.contains("write lock"), "{body}");
                assert_eq!(body["details"]["object_store"], "ok");
            }
            // One open transaction blocks nobody on PostgreSQL.
            Stack::Production => assert_eq!(status, 200, "{body}"),
        }
        held.rollback().await.unwrap();
        assert_eq!(app.readyz_becomes(200).await.0, 200);
    })
    .await;
}

#[tokio::test]
async fn the_write_probe_fails_on_a_read_only_postgresql_database() {
    let Some((admin_url, _)) = production_services("write_probe_read_only") else {
        return;
    };
    let url = fresh_postgres_database(&admin_url).await;
    let name = url.rsplit('/').next().unwrap().to_string();
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
        .await
        .unwrap();
    let sql = format!("ALTER DATABASE {name} SET default_transaction_read_only = on");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut admin)
        .await
        .unwrap();
    let TestConfig { mut config, .. } =
        test_config(Stack::Production, "write_probe_read_only", &[])
            .await
            .unwrap();
    config.database_url = iotsupport::config::Secret::new(url);
    let db = iotsupport::db::Db::connect(&config).await.unwrap();
    db.ping().await.expect("reads work");
    let error = db
        .write_probe()
        .await
        .expect_err("a read-only database cannot take writes");
    assert!(
        matches!(&error, iotsupport::db::WriteProbeError::Refused(reason) if reason.contains("read-only")),
        "{error:?}"
    );
}

/// On PostgreSQL a schema change that commits between the device write's re-read of the schema
/// and its commit went unseen (READ COMMITTED): the write stored a config validated against the
/// old schema. A change in progress now holds the device write until it commits, and the write
/// then sees it (409). Here the change is held open by hand while the device is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_write_waits_for_a_schema_change_in_progress_and_then_sees_it() {
    let Some(app) = spawn_app(Stack::Production, "schema_change_in_progress").await else {
        return;
    };
    let model = create_model(&app, "held", Some("{\"type\": \"object\"}")).await;
    let mut change = app.db().begin().await.unwrap();
    iotsupport::db::device_models::lock_schema(&mut change, model, true)
        .await
        .unwrap();
    let create = tokio::spawn({
        let client = app.client.clone();
        let url = app.url("/api/devices");
        async move {
            let response = client
                .post(url)
                .json(&json!({"device_model_id": model, "config": "{\"a\": 1}"}))
                .send()
                .await
                .unwrap();
            response.status().as_u16()
        }
    });
    // The create has validated against the old schema and waits for the change.
    let waiting = a_lock_is_awaited(&app, "l.locktype = 'advisory'").await;
    assert!(
        waiting,
        "the device write did not wait for the schema change"
    );
    iotsupport::on_conn!(&mut change, |c| sqlx::query(
        "UPDATE device_models SET config_schema = '{\"required\": [\"b\"]}' WHERE id = $1"
    )
    .bind(model)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    change.commit().await.unwrap();
    assert_eq!(create.await.unwrap(), 409);
    assert_eq!(count(&app, "devices").await, 0);
    app.stop().await;
}

/// `PUT {"active": false}`, or the same config text with the flag, leaves the stored config alone:
/// a config the Python service accepted and strict JSON does not (`NaN`) must not stop the flag
/// from changing.
#[tokio::test]
async fn an_active_only_update_keeps_a_legacy_config_it_cannot_parse() {
    for_each_stack("active_only_update", &[], async |app| {
        let model = create_model(app, "legacy", None).await;
        let device = device_of(app, model).await;
        let legacy = "{\"threshold\": NaN}";
        iotsupport::on_pool!(app.db(), |p| sqlx::query(
            "UPDATE devices SET config = $1 WHERE id = $2"
        )
        .bind(legacy)
        .bind(device.id)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        let (status, body) = app.update_device(device.id, json!({"active": false})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["active"], false);
        assert_eq!(body["config"], legacy);
        // The Python UI sends the config along with every change of the flag: the same text is
        // no change, and is not parsed again.
        let (status, body) = app
            .update_device(device.id, json!({"config": legacy, "active": true}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["active"], true);
        assert_eq!(body["config"], legacy);
        // Another text is parsed, and refused.
        let (status, body) = app
            .update_device(
                device.id,
                json!({"config": "{\"threshold\": NaN }", "active": true}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
    })
    .await;
}

/// A schema change that waits behind a firmware upload (which holds the model's row for the whole
/// upload) must not hold the model's device writes with it: it takes the row before the schema
/// lock. Here the upload's hold on the row is taken by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_waiting_behind_an_upload_does_not_hold_device_writes() {
    let Some(app) = spawn_app(Stack::Production, "schema_change_behind_upload").await else {
        return;
    };
    let model = create_model(&app, "busy", Some("{\"type\": \"object\"}")).await;
    let mut upload = app.db().begin().await.unwrap();
    iotsupport::db::firmware_versions::lock_model(&mut upload, model)
        .await
        .unwrap()
        .expect("the model");
    let change = tokio::spawn({
        let client = app.client.clone();
        let url = app.url(&format!("/api/device-models/{model}"));
        async move {
            let body = json!({"config_schema": "{\"type\": \"object\", \"required\": []}"});
            client
                .put(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let waiting = a_lock_is_awaited(&app, "TRUE").await;
    assert!(waiting, "the schema change did not wait for the upload");
    let create = tokio::time::timeout(
        Duration::from_secs(10),
        app.create_device(model, "{\"a\": 1}"),
    )
    .await;
    let (status, body) = create.expect("a device write waited for the schema change's upload");
    assert_eq!(status, 201, "{body}");
    upload.rollback().await.unwrap();
    assert_eq!(change.await.unwrap(), 200);
    app.stop().await;
}
