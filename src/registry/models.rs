//! Device models: create, update (name, config schema), delete with the firmware they hold.

use serde_json::json;

use super::RegistryError;
use crate::db::device_models::{self as models, DeviceModelRow, CODE_UNIQUE};
use crate::db::{firmware_versions, Db};
use crate::fleet::{ConfigSchema, ModelCode};
use crate::lookup_cache::Invalidation;
use crate::{events, layout, outbox};

/// A name: 1–255 characters, not only whitespace, no NUL (its column is text, which cannot hold
/// NUL on PostgreSQL).
pub fn parse_name(name: &str) -> Result<&str, RegistryError> {
    if name.trim().is_empty() || name.chars().count() > 255 {
        return Err(RegistryError::Invalid(
            "name must be 1-255 characters".into(),
        ));
    }
    if name.contains('\0') {
        return Err(RegistryError::Invalid(
            "name must not contain NUL characters".into(),
        ));
    }
    Ok(name)
}

/// Parses, bounds and compiles a schema (see `crate::fleet::ConfigSchema::parse`): a schema that
/// would make validating configs expensive is refused here, when it is set.
pub fn parse_schema(text: &str) -> Result<ConfigSchema, RegistryError> {
    ConfigSchema::parse(text).map_err(|e| RegistryError::Invalid(e.0))
}

/// What `PUT` does with the schema.
#[derive(Debug, Clone, Copy)]
pub enum SchemaChange<'a> {
    Keep,
    Remove,
    Set(&'a str),
}

/// Creates a model; the code's unique constraint decides between concurrent creates.
pub async fn create(
    db: &Db,
    code: &ModelCode,
    name: &str,
    schema: Option<&ConfigSchema>,
) -> Result<DeviceModelRow, RegistryError> {
    let mut tx = db.begin().await?;
    let id = models::insert(&mut tx, code.as_str(), name, schema.map(|s| s.text()))
        .await
        .map_err(|e| {
            if e.violates(CODE_UNIQUE.0, CODE_UNIQUE.1) {
                RegistryError::Exists(format!("DeviceModel for {code} already exists"))
            } else {
                e.into()
            }
        })?;
    let row = models::get(&mut tx, id)
        .await?
        .ok_or(RegistryError::ModelNotFound(id))?;
    events::record(
        &mut tx,
        "device_model_created",
        &json!({"id": id, "code": row.code}),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(model_code = %code, model_id = id, "device_model_created");
    Ok(row)
}

/// Changes a model's name (when given) and schema.
pub async fn update(
    db: &Db,
    id: i64,
    name: Option<&str>,
    schema: SchemaChange<'_>,
) -> Result<DeviceModelRow, RegistryError> {
    // Everything about the input is checked before the transaction begins.
    let name = name.map(parse_name).transpose()?;
    let new_schema = match schema {
        SchemaChange::Set(text) => Some(parse_schema(text)?),
        SchemaChange::Keep | SchemaChange::Remove => None,
    };
    let mut tx = db.begin().await?;
    if !matches!(schema, SchemaChange::Keep) {
        // The model's row first (as firmware uploads hold it, for their whole upload), then the
        // schema lock, after the device writes validated against the schema in force (see
        // `lock_schema`). The other way round, a schema change waiting behind an upload would
        // hold every device write of the model with it. Device writes never wait for the row
        // in a mode this conflicts with, so the order cannot deadlock.
        crate::db::firmware_versions::lock_model(&mut tx, id).await?;
        models::lock_schema(&mut tx, id, true).await?;
    }
    // Only what was given is written: a rename that keeps the schema must not write back the
    // schema it read, over a change committed meanwhile (a `Keep` takes no lock).
    let schema: Option<Option<&str>> = match (schema, &new_schema) {
        (SchemaChange::Keep, _) => None,
        (_, Some(parsed)) => Some(Some(parsed.text())),
        (_, None) => Some(None),
    };
    models::update(&mut tx, id, name, schema).await?;
    let row = models::get(&mut tx, id)
        .await?
        .ok_or(RegistryError::ModelNotFound(id))?;
    events::record(
        &mut tx,
        "device_model_updated",
        &json!({"id": id, "code": row.code}),
    )
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// Deletes a model without devices, its firmware rows, and (through the outbox) their objects.
pub async fn delete(db: &Db, caches: &dyn Invalidation, id: i64) -> Result<(), RegistryError> {
    let mut tx = db.begin().await?;
    // Lock the model row first, as firmware uploads do: a version committed between reading the
    // versions and deleting the model would otherwise lose its objects to the cascade.
    firmware_versions::lock_model(&mut tx, id)
        .await?
        .ok_or(RegistryError::ModelNotFound(id))?;
    let model = models::get(&mut tx, id)
        .await?
        .ok_or(RegistryError::ModelNotFound(id))?;
    let in_use = || {
        RegistryError::Conflict(format!(
            "DeviceModel {} has {} device(s); delete them first",
            model.code, model.device_count
        ))
    };
    if model.device_count > 0 {
        return Err(in_use());
    }
    let versions = models::firmware_versions(&mut tx, id).await?;
    // The foreign key (ON DELETE RESTRICT) still guards a device created concurrently.
    models::delete(&mut tx, id).await.map_err(|e| {
        if e.is_foreign_key_violation() {
            RegistryError::Conflict(format!(
                "DeviceModel {} has devices; delete them first",
                model.code
            ))
        } else {
            e.into()
        }
    })?;
    // Every version of the model goes: nothing to leave to another.
    let (keys, keyless) = layout::model_deletion_keys(&model.code, &versions);
    if !keyless.is_empty() {
        tracing::warn!(model_code = %model.code, versions = ?keyless,
            "device_model_versions_without_keys: no object key can name them; reconcile lists what is left");
    }
    outbox::schedule_deletion(&mut tx, &keys).await?;
    events::record(
        &mut tx,
        "device_model_deleted",
        &json!({"id": id, "code": model.code}),
    )
    .await?;
    let committed = tx.commit().await;
    caches.model_firmware_changed(id);
    committed?;
    tracing::info!(model_code = %model.code, model_id = id, firmware_versions = versions.len(), "device_model_deleted");
    Ok(())
}
