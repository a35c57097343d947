//! The command line: `iotsupport <command>`. Each command returns an exit code a script can rely
//! on: 0 success, 1 failure at run time, 2 usage or configuration error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::db::{migrate, Db};
use crate::startup::{cancel_on_signal, Application};

#[derive(Debug, Parser)]
#[command(
    name = "iotsupport",
    version,
    about = "Firmware, OTA and crash core dumps for ESP32 fleets",
    long_about = "Firmware, OTA and crash core dumps for ESP32 fleets.\n\n\
    Configuration comes from environment variables (see the README). With none set, the service \
    runs on a SQLite file and a local object directory under ./data/."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API and run the background workers until SIGTERM or Ctrl-C.
    Serve,
    /// Apply pending database migrations (`migrate status` lists applied and pending ones).
    Migrate {
        #[command(subcommand)]
        action: Option<MigrateAction>,
    },
    /// Copy the Python service's files (ASSETS_DIR firmware bundles, COREDUMPS_DIR core dumps)
    /// into the bucket and record them. Safe to re-run; never changes the source files. Run
    /// `iotsupport migrate` first.
    MigrateToS3 {
        /// Report what would be migrated; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Core dumps uploaded at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Print the crash report of a core dump file, symbolised with the firmware ELF (built-in
    /// parser; needs no database, object store or network).
    ParseCoredump {
        /// The dump: raw flash bytes, base64 as printed over UART, or an ELF core file.
        dump: std::path::PathBuf,
        /// The firmware ELF of the build that crashed.
        elf: std::path::PathBuf,
        /// Print the structured report as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Compare the bucket with the database: orphaned objects, rows whose objects are missing,
    /// and each model's current version. Changes nothing unless --repair is given.
    Reconcile {
        /// Delete orphans, mark dumps without their object ERROR, remove non-current firmware
        /// versions missing objects (unless they still hold their image or ELF).
        #[arg(long)]
        repair: bool,
        /// Repair even a scan that looks like one of the wrong store (nothing stored that the
        /// database names, or most of it missing), which --repair alone refuses.
        #[arg(long, requires = "repair")]
        force: bool,
        /// Objects younger than this many seconds are never treated as orphans (uploads in flight;
        /// at most 100 years). Default: RECONCILE_GRACE_SECONDS (3600), as the periodic check.
        #[arg(long,
              value_parser = clap::value_parser!(u64).range(0..=crate::config::MAX_DURATION.as_secs()))]
        grace: Option<u64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One run of fleet credential rotation, for deployments that schedule it as a CronJob:
    /// queue the fleet when ROTATION_CRON is due, time out the PENDING device, start the next.
    /// `serve` does the same continuously; running both is safe.
    RotationJob,
}

#[derive(Debug, Subcommand)]
pub enum MigrateAction {
    /// List every migration as applied or pending; changes nothing.
    Status,
}

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

/// Commands that need no configuration, run before it is read: `parse-coredump` touches no
/// database, object store or network, so a setting in the environment meant for `serve` (even a
/// wrong one) must not stop it. `None` for every other command.
pub fn run_without_config(cli: &Cli) -> Option<ExitCode> {
    match &cli.command {
        Command::ParseCoredump { dump, elf, json } => {
            Some(exit_code(parse_coredump(dump, elf, *json)))
        }
        _ => None,
    }
}

pub async fn run(cli: Cli, config: Config) -> ExitCode {
    let result = match cli.command {
        Command::Serve => serve(config).await,
        Command::Migrate { action: None } => migrate_up(config).await,
        Command::Migrate {
            action: Some(MigrateAction::Status),
        } => migrate_status(config).await,
        Command::MigrateToS3 {
            dry_run,
            concurrency,
        } => migrate_to_s3(config, dry_run, concurrency).await,
        Command::ParseCoredump { dump, elf, json } => parse_coredump(&dump, &elf, json),
        Command::Reconcile {
            repair,
            force,
            grace,
            json,
        } => {
            let grace = grace.map_or(config.reconcile_grace, std::time::Duration::from_secs);
            reconcile(config, repair.then_some(force), grace, json).await
        }
        Command::RotationJob => rotation_job(config).await,
    };
    exit_code(result)
}

fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<crate::config::ConfigError>().is_some() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::from(EXIT_FAILURE)
            }
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    config.check_safe_to_serve()?;
    // A key that cannot sign failed every device token (ours and, before the fallback, the
    // identity provider's) with a 500 after a warning at start.
    if let Some(pem) = &config.credentials.signing_key_pem {
        crate::credentials::tokens::check_signing_key(pem.expose()).map_err(|e| {
            crate::config::ConfigError {
                variable: "DEVICE_TOKEN_SIGNING_KEY_FILE",
                reason: format!("is not a usable signing key: {e}"),
            }
        })?;
    }
    if !config.admin_auth_enabled() {
        tracing::warn!("admin API is open: no ADMIN_TOKEN or OIDC configured");
    }
    if config.iot_device_key_auth {
        tracing::warn!(
            "IOT_DEVICE_KEY_AUTH=true: devices may authenticate with ?device_key= alone; \
             development use only"
        );
    }
    let app = Application::build(config).await?;
    cancel_on_signal(app.shutdown_token());
    app.run_until_stopped().await?;
    Ok(())
}

/// The Python service's `rotation-job`, with its output lines.
/// How `reconcile` shows its scan (SPEC §9): a spinner with the step and its counts on a
/// terminal; otherwise a log line per step, and one per 100,000 objects listed.
struct ScanProgress {
    bar: Option<indicatif::ProgressBar>,
    /// The listing last logged: its prefix and hundred thousands.
    logged: std::sync::Mutex<Option<(String, usize)>>,
}

impl ScanProgress {
    fn new() -> Self {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            crate::telemetry::set_progress_bar(Some(bar.clone()));
            bar
        });
        ScanProgress {
            bar,
            logged: std::sync::Mutex::new(None),
        }
    }

    fn show(&self, step: crate::reconcile::ScanStep<'_>) {
        use crate::reconcile::ScanStep;
        let text = match step {
            ScanStep::ReadingRows => "reading the database's rows".to_string(),
            ScanStep::Listing { prefix, listed } => {
                format!("listing {prefix}/ in the object store: {listed} objects")
            }
            ScanStep::Checking { objects, rows } => {
                format!("checking {objects} objects against {rows} rows")
            }
        };
        if let Some(bar) = &self.bar {
            bar.set_message(text);
            return;
        }
        // Without a terminal: each step once, and a listing at its start and every 100,000
        // objects.
        let mark = match step {
            ScanStep::Listing { prefix, listed } => Some((prefix.to_string(), listed / 100_000)),
            _ => None,
        };
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if mark.is_none() || mark != *logged {
            tracing::info!(step = %text, "reconcile_progress");
        }
        *logged = mark;
    }

    fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
            crate::telemetry::set_progress_bar(None);
        }
    }
}

/// Connects to the configured database, refusing a SQLite file that does not exist: connecting
/// would create it, empty, wherever the command happened to run (the commands that read an
/// existing database: `migrate-to-s3`, `reconcile`, `rotation-job`).
async fn connect_existing(config: &Config) -> anyhow::Result<Db> {
    if let Some(file) = Db::missing_sqlite_file(config) {
        anyhow::bail!(
            "the database {} does not exist: check DATABASE_URL, or run `iotsupport migrate` first",
            file.display()
        );
    }
    let db = Db::connect(config).await?;
    crate::db::clock::sync_or_warn(&db).await;
    Ok(db)
}

async fn rotation_job(config: Config) -> anyhow::Result<()> {
    let db = connect_existing(&config).await?;
    if db.ping().await.is_err() {
        anyhow::bail!("Cannot connect to database");
    }
    let report = crate::credentials::rotation::run_job(&db, &config.rotation).await;
    db.close().await;
    let report = report.map_err(|e| anyhow::anyhow!("Error during rotation job: {e}"))?;
    let python_bool = |b: bool| if b { "True" } else { "False" };
    println!("Rotation job completed");
    println!("  Timeouts processed: {}", report.timeouts_processed);
    println!(
        "  Device rotated: {}",
        report.device_rotated.as_deref().unwrap_or("none")
    );
    println!(
        "  Scheduled triggered: {}",
        python_bool(report.scheduled_triggered)
    );
    Ok(())
}

async fn migrate_up(config: Config) -> anyhow::Result<()> {
    use crate::db::adopt::LegacyFilenames;
    let db = Db::connect(&config).await?;
    crate::db::clock::sync_or_warn(&db).await;
    let before = match migrate::legacy_revision(&db).await? {
        // Adoption records the first migration as applied without running it.
        Some(_) => migrate::pending_count(&db).await?.saturating_sub(1),
        None => migrate::pending_count(&db).await?,
    };
    let outcome = migrate::run(&db).await;
    let queued = match &outcome {
        Ok(done) if done.adopted.is_some() => {
            crate::coredumps::job::queued_parses(&db).await.map(Some)
        }
        _ => Ok(None),
    };
    db.close().await;
    let outcome = outcome?;
    if let Some(revision) = &outcome.adopted {
        println!("adopted the Python service's database at Alembic revision {revision}");
    }
    if let Some(queued) = queued? {
        println!("queued {queued} parse(s) of adopted core dumps still PENDING");
    }
    println!("applied {before} migration(s); database is up to date");
    match outcome.legacy_filenames {
        LegacyFilenames::Absent => {}
        LegacyFilenames::Busy => println!(
            "kept coredumps.filename: no legacy core dump needs it, but the table was busy; the next `migrate` drops it"
        ),
        LegacyFilenames::Dropped => {
            println!("dropped coredumps.filename: no legacy core dump needs it any more")
        }
        LegacyFilenames::Remaining(rows) => println!(
            "kept coredumps.filename: {rows} legacy core dump(s) still to move with `iotsupport migrate-to-s3`"
        ),
    }
    Ok(())
}

async fn migrate_status(config: Config) -> anyhow::Result<()> {
    // A SQLite file that does not exist is all pending, and stays not existing ("changes
    // nothing"): connecting would create it.
    let status = match Db::missing_sqlite_file(&config) {
        Some(file) => {
            println!(
                "new      {} does not exist yet: `iotsupport migrate` creates it",
                file.display()
            );
            migrate::status_of_a_new_sqlite_database()
        }
        None => {
            let db = Db::connect(&config).await?;
            if let Some(revision) = migrate::legacy_revision(&db).await? {
                println!(
                    "legacy   the Python service's database at Alembic revision {revision:?}; `iotsupport migrate` adopts it"
                );
            }
            let status = migrate::status(&db).await;
            db.close().await;
            status?
        }
    };
    for m in &status {
        let state = if m.applied { "applied" } else { "pending" };
        println!("{state:<8} {} {}", m.version, m.description);
    }
    let pending = status.iter().filter(|m| !m.applied).count();
    println!("{} applied, {pending} pending", status.len() - pending);
    Ok(())
}

/// `migrate-to-s3`: checks that the database (migrated) and the bucket are reachable before
/// anything is written, then runs both phases and prints the summary.
async fn migrate_to_s3(config: Config, dry_run: bool, concurrency: usize) -> anyhow::Result<()> {
    use crate::migrate_to_s3::{self, Options};
    use anyhow::Context;
    for (variable, dir) in [
        ("ASSETS_DIR", &config.assets_dir),
        ("COREDUMPS_DIR", &config.coredumps_dir),
    ] {
        if let Some(dir) = dir {
            if !dir.is_dir() {
                return Err(crate::config::ConfigError {
                    variable,
                    reason: format!("{} is not a directory", dir.display()),
                }
                .into());
            }
        }
    }
    // Connecting would create it, empty: nothing to migrate into, and a dry run writes nothing.
    let db = connect_existing(&config)
        .await
        .context("Cannot connect to database")?;
    db.ping().await.context("Cannot connect to database")?;
    if migrate::legacy_revision(&db).await?.is_some() || migrate::pending_count(&db).await? > 0 {
        anyhow::bail!("the database schema is not up to date: run `iotsupport migrate` first");
    }
    let storage = if dry_run {
        // A dry run writes nothing, not even the bucket; it reads no objects either.
        if let crate::config::StorageConfig::S3(s3) = &config.storage {
            if !crate::storage::bucket::bucket_exists(s3)
                .await
                .context("S3 is not reachable")?
            {
                println!(
                    "bucket {} does not exist yet; a real run creates it",
                    s3.bucket
                );
            }
        }
        crate::startup::open_storage_without_creating(&config)?
    } else {
        let storage = crate::startup::open_storage(&config)
            .await
            .context("S3 is not reachable")?;
        storage.check().await.context("S3 is not reachable")?;
        storage
    };
    let options = Options {
        assets_dir: config.assets_dir.clone(),
        coredumps_dir: config.coredumps_dir.clone(),
        dry_run,
        max_entry_bytes: config.max_firmware_bytes,
        concurrency,
    };
    let started = std::time::Instant::now();
    let result = migrate_to_s3::run(&db, &storage, &options).await;
    db.close().await;
    // Where the objects went, so a run against the wrong store is noticed at once.
    let print_store = || match &config.storage {
        crate::config::StorageConfig::S3(s3) => {
            println!(
                "  Object store: bucket {} at {}",
                s3.bucket, s3.endpoint_url
            )
        }
        crate::config::StorageConfig::Local { dir } => {
            println!("  Object store: the local directory {}", dir.display())
        }
    };
    let summary = match result {
        Ok(summary) => summary,
        Err(stopped) => {
            print!("{}", stopped.summary.render_stopped(dry_run));
            print_store();
            anyhow::bail!(
                "{}\nWhat was migrated is kept: once the cause is fixed, run \
                 `iotsupport migrate-to-s3` again and it carries on from there.",
                stopped.error
            );
        }
    };
    print!("{}", summary.render(dry_run));
    print_store();
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        firmware_migrated = summary.firmware_migrated,
        coredumps_migrated = summary.coredumps_migrated,
        warnings = summary.warning_count(),
        dry_run,
        "migrate_to_s3_finished"
    );
    Ok(())
}

/// `parse-coredump`: reads two local files and prints the built-in parser's report.
fn parse_coredump(dump: &std::path::Path, elf: &std::path::Path, json: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    let dump_bytes =
        std::fs::read(dump).with_context(|| format!("cannot read {}", dump.display()))?;
    let elf_bytes = std::fs::read(elf).with_context(|| format!("cannot read {}", elf.display()))?;
    let core = esp_coredump::parse_dump(&dump_bytes)
        .with_context(|| format!("{} is not a usable core dump", dump.display()))?;
    let report = esp_coredump::analyse(&core, &elf_bytes)
        .with_context(|| format!("cannot analyse {} with {}", dump.display(), elf.display()))?;
    let output = if json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        report.to_text()
    };
    write_stdout(&output).context("cannot write the report")
}

/// Writes `text` to stdout; a reader that went away (`… | head`) is no failure, where `println!`
/// would panic and exit 101 after the work was done.
fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// A repair grace below this gets a warning (see [`reconcile`]).
const SHORT_REPAIR_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// Carries out the deletions due in the outbox now, as the worker would (on SQLite with its
/// pause between batches, so that a running `serve`'s writers get the database in between):
/// what was deleted, and why it stopped early if it did.
async fn drain_outbox(
    db: &Db,
    storage: &crate::storage::Storage,
) -> (crate::outbox::OutboxPass, Option<anyhow::Error>) {
    let mut deleted = crate::outbox::OutboxPass::default();
    loop {
        match crate::outbox::process_due(db, storage).await {
            Ok(pass) => {
                deleted.deleted += pass.deleted;
                deleted.failed += pass.failed;
                if pass.deleted == 0 {
                    return (deleted, None);
                }
                if let Some(pause) = crate::outbox::pause_between_batches(db) {
                    tokio::time::sleep(pause).await;
                }
            }
            Err(e) => {
                let e = anyhow::Error::from(e).context(
                    "repair committed, but carrying out its deletions failed (they stay queued \
                     in the outbox)",
                );
                return (deleted, Some(e));
            }
        }
    }
}

/// `repair`: `None` to report only, `Some(force)` to repair.
async fn reconcile(
    config: Config,
    repair: Option<bool>,
    grace: std::time::Duration,
    json: bool,
) -> anyhow::Result<()> {
    use crate::reconcile;
    if repair.is_some() && grace < SHORT_REPAIR_GRACE {
        // A core dump's object is written before its row commits: with a running service, an
        // upload in that moment looks like an orphan to a scan that does not wait this long.
        eprintln!(
            "warning: --grace {} s: objects this recent are repaired as orphans if no row names \
             them yet, which includes uploads still in progress while a service runs (keep the \
             grace above the longest upload, the default is an hour)",
            grace.as_secs()
        );
    }
    let db = connect_existing(&config).await?;
    db.ping().await?;
    // A directory that is not there (a mistyped STORAGE_DIR, a relative one from another working
    // directory) is no store to scan: every row would look dangling, as with a missing bucket.
    if let crate::config::StorageConfig::Local { dir } = &config.storage {
        if !dir.is_dir() {
            anyhow::bail!(
                "the storage directory {} does not exist: check STORAGE_DIR (a relative path \
                 is taken from the working directory; reconcile never creates it)",
                dir.display()
            );
        }
    }
    // Never create the bucket here: an empty new one would make every row look dangling.
    let storage = crate::startup::open_storage_without_creating(&config)?;
    if let Err(e) = storage.check().await {
        let detail = e.to_string();
        anyhow::bail!(if detail.contains("NoSuchBucket") {
            "the bucket does not exist: check S3_BUCKET_NAME and S3_ENDPOINT_URL (`serve` and \
             `migrate-to-s3` create it; reconcile never does)"
                .to_string()
        } else {
            format!("cannot read the object store (is the bucket there?): {detail}")
        });
    }
    let report = {
        let shown = ScanProgress::new();
        let report = reconcile::scan_showing(&db, &storage, grace, &|step| shown.show(step)).await;
        shown.finish();
        report?
    };
    // A repair that is refused or fails still prints the scan (and what it did, if anything)
    // before its error: the operator sees what it found.
    let mut failure: Option<anyhow::Error> = None;
    let (summary, deleted) = match repair {
        Some(force) => {
            // A repair that fails part-way has committed what `summary` counts: that is shown,
            // and the deletions it queued are carried out all the same.
            let mut summary = reconcile::RepairSummary::default();
            match reconcile::repair_into(&db, &storage, &report, force, &mut summary).await {
                Err(e @ reconcile::ReconcileError::Refused(_)) => {
                    failure = Some(e.into());
                    (None, None)
                }
                repaired => {
                    if let Err(e) = repaired {
                        failure = Some(anyhow::Error::from(e).context(
                            "repair stopped part-way; what it did is shown, and a rerun carries on",
                        ));
                    }
                    let (deleted, outbox_failure) = drain_outbox(&db, &storage).await;
                    failure = failure.or(outbox_failure);
                    (Some(summary), Some(deleted))
                }
            }
        }
        None => (None, None),
    };
    // Written at once at the end, where a closed pipe (`reconcile | head`) is no failure.
    let mut out = String::new();
    // Writing into a String cannot fail.
    macro_rules! say {
        ($out:expr, $($arg:tt)*) => {{
            use std::fmt::Write as _;
            let _ = writeln!($out, $($arg)*);
        }};
    }
    if json {
        say!(
            out,
            "{}",
            serde_json::json!({
                "report": report,
                "wrong_store": report.wrong_store(),
                "repair": summary,
                "repair_error": failure.as_ref().map(|e| format!("{e:#}")),
                "objects_deleted": deleted.as_ref().map(|d| d.deleted),
                "object_deletions_failed": deleted.as_ref().map(|d| d.failed),
            })
        );
    } else {
        say!(out, "scanned {} object(s)", report.objects_scanned);
        for o in &report.orphans {
            say!(
                out,
                "orphan   {} ({} bytes, {})",
                o.key,
                o.size,
                o.last_modified.to_rfc3339()
            );
        }
        for m in &report.misplaced {
            say!(out, "misplaced {} (belongs at {})", m.key, m.belongs_at);
        }
        for key in &report.unrecognised {
            say!(
                out,
                "unrecognised {key} (not in the key layout; left alone)"
            );
        }
        for v in &report.unsupported_versions {
            say!(
                out,
                "unsupported version {}/{:?}: {} (left alone)",
                v.model_code,
                v.version,
                v.reason
            );
        }
        for f in &report.dangling_firmware {
            let current = if f.is_current {
                " (current version)"
            } else {
                ""
            };
            say!(
                out,
                "dangling firmware {}/{}{current}: missing {}",
                f.model_code,
                f.version,
                f.missing.join(", ")
            );
        }
        for d in &report.dangling_coredumps {
            say!(
                out,
                "dangling coredump {} (device {}): missing {}",
                d.coredump_id,
                d.device_key,
                d.object_key
            );
        }
        for d in &report.rotation_count_drift {
            say!(
                out,
                "rotation counter (active {}, {}, completed {:?}): {} kept, {} counted",
                d.active,
                d.rotation_state,
                d.completed_day,
                d.kept,
                d.counted
            );
        }
        for d in &report.coredump_count_drift {
            say!(
                out,
                "dump count of device {}: {} kept, {} counted",
                d.device_key,
                d.kept,
                d.counted
            );
        }
        for c in &report.current_versions {
            let state = if c.stored { "ok" } else { "NOT STORED" };
            say!(
                out,
                "current  {} -> {} [{state}]",
                c.model_code,
                c.firmware_version.as_deref().unwrap_or("(none)")
            );
        }
        say!(out,
            "{} orphan(s), {} dangling firmware version(s), {} dangling core dump(s), {} recent object(s) within the grace period",
            report.orphans.len(),
            report.dangling_firmware.len(),
            report.dangling_coredumps.len(),
            report.recent_unclaimed
        );
        if report.legacy_coredumps > 0 {
            say!(out,
                "{} legacy core dump(s) still wait in COREDUMPS_DIR: run `iotsupport migrate-to-s3`",
                report.legacy_coredumps
            );
        }
        if let Some(reason) = report.wrong_store() {
            say!(
                out,
                "warning: {reason} (--repair refuses this without --force)"
            );
        }
        if let (Some(s), Some(d)) = (&summary, &deleted) {
            say!(out,
                "repaired: moved {} misplaced object(s), queued {} orphan(s) for deletion ({} claimed by a row since the scan), marked {} core dump(s) ERROR (kept {} parsed one(s) with their report), removed {} firmware version(s), left {} current version(s) for re-upload and {} incomplete version(s) that still hold their image or ELF",
                s.misplaced_moved, s.orphans_queued, s.orphans_claimed_since, s.coredumps_marked_error, s.parsed_coredumps_left, s.firmware_versions_removed, s.current_versions_left, s.incomplete_versions_left
            );
            say!(
                out,
                "deleted {} object(s) from the store ({} failed, left queued for retry)",
                d.deleted,
                d.failed
            );
            if s.rotation_counts_recounted {
                say!(out, "recounted the rotation counters");
            }
            if s.coredump_counts_recounted > 0 {
                say!(
                    out,
                    "recounted the dump count of {} device(s)",
                    s.coredump_counts_recounted
                );
            }
        }
    }
    write_stdout(&out).map_err(|e| anyhow::anyhow!("cannot write the scan: {e}"))?;
    db.close().await;
    if let Some(e) = failure {
        return Err(e);
    }
    // A script must be able to tell that the cleanup did not happen.
    if let Some(d) = deleted.filter(|d| d.failed > 0) {
        anyhow::bail!(
            "{} object deletion(s) failed and stay queued in the outbox (serve's outbox worker \
             retries them, and so does the next reconcile --repair)",
            d.failed
        );
    }
    Ok(())
}
