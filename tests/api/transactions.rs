//! One transaction per request, committed only on success: an error response never leaves
//! partial writes behind, whether the handler fails on its own or because the store failed.

use axum::extract::{Path, Query, State};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::StatusCode;
use iotsupport::http::auth::AdminEditor;
use iotsupport::http::error::ApiError;
use iotsupport::on_conn;
use iotsupport::startup::BuildOptions;
use iotsupport::state::AppState;
use iotsupport::storage::faulty::Fault;
use iotsupport::storage::{ObjectKey, Operation};
use serde::Deserialize;
use serde_json::Value;

use crate::helpers::*;

#[derive(Deserialize)]
struct Behaviour {
    #[serde(default)]
    fail_after_write: bool,
}

/// Writes a model row and an object the way golden rule 1 says (rows, flush, upload, commit),
/// failing on request after the write.
async fn create_model_with_object(
    _: AdminEditor,
    State(state): State<AppState>,
    Path(code): Path<String>,
    Query(behaviour): Query<Behaviour>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.db.begin().await?;
    let now = iotsupport::db::now();
    on_conn!(&mut tx, |c| sqlx::query(
        "INSERT INTO device_models (code, name, created_at, updated_at) VALUES ($1, $1, $2, $2)"
    )
    .bind(&code)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .map_err(iotsupport::db::DbError::from)?;
    if behaviour.fail_after_write {
        return Err(ApiError::validation("deliberate failure after the write"));
    }
    let key = ObjectKey::from_segments(&["probe", &code, "blob"])?;
    state
        .storage
        .put(&key, Bytes::from_static(b"payload"))
        .await?;
    tx.commit().await?;
    Ok(StatusCode::CREATED)
}

/// Apps with the probe route.
fn with_probe(test: &str) -> TestAppBuilder<'static> {
    TestApp::builder(test).options(|| BuildOptions {
        extra_routes: Some(
            Router::new().route("/test/models/{code}", post(create_model_with_object)),
        ),
        ..Default::default()
    })
}

async fn model_count(app: &TestApp, code: &str) -> i64 {
    let db = app.db();
    match db {
        iotsupport::db::Db::Postgres(p) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM device_models WHERE code = $1")
                .bind(code)
                .fetch_one(p)
                .await
                .unwrap()
        }
        iotsupport::db::Db::Sqlite(p) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM device_models WHERE code = $1")
                .bind(code)
                .fetch_one(p)
                .await
                .unwrap()
        }
    }
}

#[tokio::test]
async fn an_error_after_a_write_leaves_nothing_committed() {
    with_probe("error_after_write")
        .for_each_stack(async |app| {
            let response = app
                .client
                .post(app.url("/test/models/failing?fail_after_write=true"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 400);
            assert_eq!(
                response.json::<Value>().await.unwrap()["code"],
                "VALIDATION_FAILED"
            );
            assert_eq!(model_count(app, "failing").await, 0, "row leaked");

            // The same route commits when nothing fails, so the check above can fail.
            let response = app
                .client
                .post(app.url("/test/models/working"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
            assert_eq!(model_count(app, "working").await, 1);
            let key = ObjectKey::parse("probe/working/blob").unwrap();
            assert!(app.state.storage.head(&key).await.is_ok());
        })
        .await;
}

#[tokio::test]
async fn an_object_store_outage_during_a_create_is_503_and_commits_nothing() {
    with_probe("outage_during_create")
        .for_each_stack(async |app| {
            app.faults.inject(Fault::always(Operation::Put));
            let response = app
                .client
                .post(app.url("/test/models/unlucky"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 503);
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["code"], "SERVICE_UNAVAILABLE");
            assert_eq!(model_count(app, "unlucky").await, 0, "row leaked");
            app.faults.heal();
            let key = ObjectKey::parse("probe/unlucky/blob").unwrap();
            assert!(app
                .state
                .storage
                .head(&key)
                .await
                .unwrap_err()
                .is_not_found());
        })
        .await;
}

/// Pages and reads take no write lock: on SQLite a writer holding on (an upload's transaction, a
/// slow S3 call in one) must not make the admin's lists, the dashboards or a device's config poll
/// wait for the busy timeout and fail with 503.
#[tokio::test]
async fn reads_answer_while_a_writer_holds_the_sqlite_database() {
    let Some(app) = spawn_app(Stack::Embedded, "reads_beside_a_writer").await else {
        return;
    };
    let device = crate::fleet::model_with_device(&app, "reader").await;
    let (model, id) = (device.model_id, device.id);
    let held = app.db().begin().await.unwrap();
    let paths = [
        "/api/device-models".to_string(),
        format!("/api/device-models/{model}"),
        "/api/devices".to_string(),
        format!("/api/devices/{id}"),
        format!("/api/devices/{id}/coredumps"),
        format!("/api/device-models/{model}/crash-groups"),
        "/api/rotation/status".to_string(),
        "/api/rotation/dashboard".to_string(),
    ];
    for path in &paths {
        let response = app.get(path).await;
        assert_eq!(
            response.status(),
            200,
            "{path}: {:?}",
            response.text().await
        );
    }
    let (status, body) =
        crate::credentials_support::iot_get(&app, "/api/iot/config", &device.credential).await;
    assert_eq!(status, 200, "{body}");
    held.rollback().await.unwrap();
    app.stop().await;
}
