//! Devices: create (a new key and secret), update (config, active flag), delete with their dumps.

use serde_json::{json, Value};

use super::validation::{ensure_schema_unchanged, ConfigValidator};
use super::RegistryError;
use crate::db::device_models::{self as models, DeviceModelRow};
use crate::db::devices::{self, DeviceRow, KEY_UNIQUE};
use crate::db::{Db, Tx};
use crate::fleet::{ClientId, DeviceKey, DeviceSecret};
use crate::lookup_cache::Invalidation;
use crate::notify::Notifier;
use crate::{events, layout, outbox};

/// How often a new random key is tried when it collides with an existing one (5 random bytes:
/// a collision is already rare at fleet sizes; several in a row mean something else is wrong).
const KEY_ATTEMPTS: usize = 5;

fn event_payload(row: &DeviceRow) -> Value {
    json!({"id": row.id, "key": row.key, "device_model_id": row.device_model_id})
}

/// A device and its model, or [`RegistryError::DeviceNotFound`].
pub async fn load(tx: &mut Tx, id: i64) -> Result<(DeviceRow, DeviceModelRow), RegistryError> {
    let row = devices::get(tx, id)
        .await?
        .ok_or(RegistryError::DeviceNotFound(id))?;
    let model = models::get(tx, row.device_model_id)
        .await?
        .ok_or(RegistryError::ModelNotFound(row.device_model_id))?;
    Ok((row, model))
}

/// Creates a device of model `model_id` with a new random key and secret; the secret is returned
/// here only. The config is validated before the write transaction begins (see
/// [`super::validation`]); a schema changed meanwhile is a conflict.
pub async fn create(
    db: &Db,
    validator: &ConfigValidator,
    model_id: i64,
    config_text: &str,
) -> Result<(DeviceRow, DeviceModelRow, DeviceSecret), RegistryError> {
    let validated_against = {
        let mut tx = db.begin().await?;
        let model = models::get(&mut tx, model_id)
            .await?
            .ok_or(RegistryError::ModelNotFound(model_id))?;
        tx.commit().await?;
        model
    };
    let config = validator.check(config_text, &validated_against).await?;
    for _ in 0..KEY_ATTEMPTS {
        let mut tx = db.begin().await?;
        // A schema change waits for this transaction, and this one sees any that committed.
        models::lock_schema(&mut tx, model_id, false).await?;
        let model = models::get(&mut tx, model_id)
            .await?
            .ok_or(RegistryError::ModelNotFound(model_id))?;
        ensure_schema_unchanged(&validated_against, &model)?;
        let key = DeviceKey::generate();
        let secret = DeviceSecret::generate();
        // The unique constraint decides about collisions; a failed insert ends this transaction
        // (PostgreSQL aborts it), so each attempt gets a fresh one.
        let id =
            match devices::insert(&mut tx, key.as_str(), model.id, &config, &secret.hash()).await {
                Ok(id) => id,
                Err(e) if e.violates(KEY_UNIQUE.0, KEY_UNIQUE.1) => {
                    tracing::warn!(device_key = %key, "device_key_collision");
                    continue;
                }
                Err(e) if e.is_foreign_key_violation() => {
                    return Err(RegistryError::ModelNotFound(model_id))
                }
                Err(e) => return Err(e.into()),
            };
        let (row, model) = load(&mut tx, id).await?;
        events::record(&mut tx, "device_created", &event_payload(&row)).await?;
        tx.commit().await?;
        tracing::info!(device_key = %key, device_id = id, model_code = %model.code, "device_created");
        return Ok((row, model, secret));
    }
    Err(RegistryError::Conflict(
        "Could not find a free device key; try again".into(),
    ))
}

/// Replaces a device's config (when given) and active flag (when given). A new config is
/// validated before the write transaction begins, as in [`create`].
pub async fn update(
    db: &Db,
    validator: &ConfigValidator,
    notifier: Notifier,
    id: i64,
    config_text: Option<&str>,
    active: Option<bool>,
) -> Result<(DeviceRow, DeviceModelRow), RegistryError> {
    // A config that was the stored one when read, and is not any more when written (another
    // request changed it in between), is read and decided again: written as it is, the request
    // would have left the other's config in place while saying it set its own.
    for _ in 0..UPDATE_ATTEMPTS {
        let validated = match config_text {
            Some(text) => {
                let mut tx = db.begin().await?;
                let (row, model) = load(&mut tx, id).await?;
                tx.commit().await?;
                // The text the device already has is no change: it is not parsed or validated
                // again. The Python UI sends the config with every change of the active flag,
                // and an adopted config the Python service accepted (`NaN`) must not stop the
                // flag from changing.
                if row.config == text {
                    None
                } else {
                    Some((validator.check(text, &model).await?, model))
                }
            }
            None => None,
        };
        let mut tx = db.begin().await?;
        let (row, _) = load(&mut tx, id).await?;
        if validated.is_none() && config_text.is_some_and(|text| row.config != text) {
            continue;
        }
        if let Some((_, validated_against)) = &validated {
            // A schema change waits for this transaction, and this one sees any that committed.
            models::lock_schema(&mut tx, row.device_model_id, false).await?;
            let model = models::get(&mut tx, row.device_model_id)
                .await?
                .ok_or(RegistryError::ModelNotFound(row.device_model_id))?;
            ensure_schema_unchanged(validated_against, &model)?;
        }
        // Without a new config the stored text is left alone, not parsed again: an adopted one
        // the Python service accepted (`NaN`) must not stop the active flag from changing.
        let config = validated.as_ref().map(|(config, _)| config);
        devices::update(&mut tx, id, config, active).await?;
        let (row, model) = load(&mut tx, id).await?;
        events::record(&mut tx, "device_updated", &event_payload(&row)).await?;
        // As the original: after every successful update, whatever changed.
        notifier
            .config_changed(&mut tx, &ClientId::format(&row.model_code, &row.key))
            .await?;
        tx.commit().await?;
        return Ok((row, model));
    }
    Err(RegistryError::Conflict(
        "The device's config kept changing while this update was made; try again".into(),
    ))
}

/// How often [`update`] decides again when the config changed under it.
const UPDATE_ATTEMPTS: usize = 3;

/// Deletes a device, its dump rows, and (through the outbox) their objects.
pub async fn delete(db: &Db, caches: &dyn Invalidation, id: i64) -> Result<(), RegistryError> {
    let mut tx = db.begin().await?;
    // After the uploads in flight: their dumps are listed below, with the others.
    crate::db::coredumps::lock_device_dumps(&mut tx, id).await?;
    let (row, _) = load(&mut tx, id).await?;
    let dumps = devices::coredump_ids(&mut tx, id).await?;
    devices::delete(&mut tx, id).await?;
    let keys = dumps
        .iter()
        .map(|dump| layout::coredump_key(&row.key, *dump))
        .collect::<Result<Vec<_>, _>>()?;
    outbox::schedule_deletion(&mut tx, &keys).await?;
    // Messages still queued for it would go to a device that no longer exists.
    crate::db::notifications::withdraw(&mut tx, &ClientId::format(&row.model_code, &row.key))
        .await?;
    events::record(&mut tx, "device_deleted", &event_payload(&row)).await?;
    let committed = tx.commit().await;
    // Even after a failed commit: it may have happened, and forgetting costs one query.
    caches.device_changed(&row.key);
    committed?;
    tracing::info!(device_key = %row.key, device_id = id, coredumps = keys.len(), "device_deleted");
    Ok(())
}
