//! The firmware phase: `ASSETS_DIR/{model_code}/firmware-{version}.zip` → five objects + a row.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::report::{Kind, Outcome, Reporter};
use super::{sorted_entries, subdirectory_entries, MigrateToS3Error, Options};
use crate::db::firmware_versions as fw;
use crate::db::Db;
use crate::firmware::bundle::{self, BundleError};
use crate::firmware::store::{self, ImportPlan, Imported, StoreError};
use crate::storage::Storage;

/// One bundle file found under a model directory.
struct BundleFile {
    model_id: i64,
    code: String,
    version: String,
    path: PathBuf,
}

pub(super) async fn migrate(
    db: &Db,
    storage: &Storage,
    assets_dir: &Path,
    options: &Options,
    reporter: &Reporter,
) -> Result<(), MigrateToS3Error> {
    let Some(entries) = sorted_entries(assets_dir)? else {
        reporter.warn(format!(
            "ASSETS_DIR {} does not exist: no firmware migrated",
            assets_dir.display()
        ));
        return Ok(());
    };
    let mut bundles = Vec::new();
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !path.is_dir() {
            if name.ends_with(".bin") {
                // Not a warning: flat binaries are the Python service's pre-bundle layout and are
                // never migrated (SPEC §10).
                reporter.item(
                    Kind::Firmware,
                    &name,
                    Outcome::Skipped,
                    Some(&format!("Skipping legacy flat binary: {name}")),
                    false,
                );
            }
            continue;
        }
        let model = fw::model_by_code(db, &name).await?;
        let Some(model) = model else {
            reporter.item(
                Kind::Firmware,
                &name,
                Outcome::Skipped,
                Some(&format!(
                    "Model directory '{name}' has no matching DB record, skipping"
                )),
                true,
            );
            continue;
        };
        for zip in subdirectory_entries(&path, reporter) {
            let file_name = zip.file_name().to_string_lossy().into_owned();
            let Some(version) = file_name
                .strip_prefix("firmware-")
                .and_then(|rest| rest.strip_suffix(".zip"))
            else {
                continue;
            };
            bundles.push(BundleFile {
                model_id: model.id,
                code: model.code.clone(),
                version: version.to_string(),
                path: zip.path(),
            });
        }
    }
    reporter.phase(Kind::Firmware, bundles.len());
    for file in bundles {
        migrate_one(db, storage, file, options, reporter).await?;
    }
    Ok(())
}

async fn migrate_one(
    db: &Db,
    storage: &Storage,
    file: BundleFile,
    options: &Options,
    reporter: &Reporter,
) -> Result<(), MigrateToS3Error> {
    let item = format!("{}/{}", file.code, file.version);
    let skip = |reason: String| {
        reporter.item(
            Kind::Firmware,
            &item,
            Outcome::Skipped,
            Some(&format!("Failed to migrate firmware {item}: {reason}")),
            true,
        )
    };
    let (bundle, notes, modified) = match validate(&file, options.max_entry_bytes).await {
        Ok(validated) => validated,
        Err(BundleError::Invalid(reason) | BundleError::TooLarge(reason)) => {
            skip(reason);
            return Ok(());
        }
        Err(BundleError::Io(e)) => {
            skip(format!("cannot read {}: {e}", file.path.display()));
            return Ok(());
        }
    };
    if bundle.version.as_str() != file.version {
        skip(format!(
            "the file name says version {} but the bundle is version {}",
            file.version,
            bundle.version.as_str()
        ));
        return Ok(());
    }
    for note in &notes {
        reporter.warn(format!(
            "Firmware {item}: {note}; {}",
            if reporter.dry_run() {
                "it would be migrated as the Python service kept it"
            } else {
                "migrated as the Python service kept it (an upload through the API would be \
                 refused)"
            }
        ));
    }
    if reporter.dry_run() {
        let mut tx = db.begin_read().await?;
        let plan = store::plan_import(&mut tx, file.model_id, &bundle).await?;
        tx.commit().await?;
        let outcome = match plan {
            ImportPlan::Create => Outcome::Migrated,
            ImportPlan::FillLegacyRow(_) => {
                // As the real run decides: a newer build in the bucket under this version wins.
                match store::stored_build_differs(storage, &file.code, &file.version, &bundle).await
                {
                    Ok(None) => Outcome::Migrated,
                    Ok(Some(_)) => {
                        skip(conflict(&item));
                        return Ok(());
                    }
                    Err(StoreError::Storage(e)) => return Err(e.into()),
                    Err(StoreError::Db(e)) => return Err(e.into()),
                    Err(e) => {
                        skip(e.to_string());
                        return Ok(());
                    }
                }
            }
            ImportPlan::DeletedSince => {
                deleted_since(reporter, &item);
                return Ok(());
            }
            ImportPlan::Unchanged => {
                let keys = crate::layout::firmware_keys(&file.code, &file.version)
                    .map_err(crate::storage::StorageError::from)?;
                if store::all_stored(storage, &keys).await? {
                    Outcome::Unchanged
                } else {
                    reporter.warn(format!(
                        "Firmware {item} is recorded as migrated but missing from the object \
                         store: it would be written again"
                    ));
                    Outcome::Migrated
                }
            }
            ImportPlan::Conflict => {
                skip(conflict(&item));
                return Ok(());
            }
        };
        reporter.item(Kind::Firmware, &item, outcome, None, false);
        return Ok(());
    }
    match store::import_bundle(db, storage, file.model_id, bundle, modified).await {
        Ok(Imported::Created | Imported::FilledLegacyRow) => {
            reporter.item(Kind::Firmware, &item, Outcome::Migrated, None, false)
        }
        Ok(Imported::Unchanged) => {
            reporter.item(Kind::Firmware, &item, Outcome::Unchanged, None, false)
        }
        Ok(Imported::DeletedSince) => deleted_since(reporter, &item),
        Ok(Imported::Restored) => {
            reporter.warn(format!(
                "Firmware {item} was recorded as migrated but missing from the object store: \
                 written again"
            ));
            reporter.item(Kind::Firmware, &item, Outcome::Migrated, None, false)
        }
        Err(StoreError::Conflict(_)) => skip(conflict(&item)),
        Err(StoreError::ModelNotFound(_)) => skip("its model was deleted meanwhile".to_string()),
        Err(StoreError::Key(e)) => skip(format!("not a usable object key: {e}")),
        Err(StoreError::Io(e)) => skip(format!("cannot read an extracted artifact: {e}")),
        Err(StoreError::VersionNotFound(reason)) => skip(reason),
        // Validated before it got here; import_bundle never validates.
        Err(StoreError::Bundle(e)) => skip(e.to_string()),
        Err(StoreError::Db(e)) => return Err(e.into()),
        Err(StoreError::Storage(e)) => return Err(e.into()),
    }
    Ok(())
}

/// A version an earlier run stored and that was deleted or pruned since: left so.
fn deleted_since(reporter: &Reporter, item: &str) {
    reporter.item(
        Kind::Firmware,
        item,
        Outcome::Unchanged,
        Some(&format!(
            "Firmware {item} was migrated before and deleted or pruned since; not brought back"
        )),
        true,
    );
}

fn conflict(item: &str) -> String {
    format!("version {item} is already stored with different content; the stored build was kept")
}

/// Validates the bundle like an upload (on the blocking pool), except that the checks the Python
/// service did not make only report (`Coherence::Reported`); also returns the file's
/// modification time, which becomes the version's `uploaded_at`.
async fn validate(
    file: &BundleFile,
    max_entry_bytes: u64,
) -> Result<(bundle::Bundle, Vec<String>, DateTime<Utc>), BundleError> {
    let path = file.path.clone();
    let code = file.code.clone();
    tokio::task::spawn_blocking(move || {
        let zip = std::fs::File::open(&path)?;
        let modified = zip
            .metadata()?
            .modified()
            .map(DateTime::<Utc>::from)
            .unwrap_or_else(|_| Utc::now());
        let (bundle, notes) =
            bundle::validate(zip, &code, max_entry_bytes, bundle::Coherence::Reported)?;
        Ok((bundle, notes, modified))
    })
    .await
    .map_err(|e| BundleError::Io(std::io::Error::other(e)))?
}
