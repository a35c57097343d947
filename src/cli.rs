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
}

#[derive(Debug, Subcommand)]
pub enum MigrateAction {
    /// List every migration as applied or pending; changes nothing.
    Status,
}

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

pub async fn run(cli: Cli, config: Config) -> ExitCode {
    let result = match cli.command {
        Command::Serve => serve(config).await,
        Command::Migrate { action: None } => migrate_up(config).await,
        Command::Migrate {
            action: Some(MigrateAction::Status),
        } => migrate_status(config).await,
    };
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

async fn migrate_up(config: Config) -> anyhow::Result<()> {
    let db = Db::connect(&config).await?;
    let before = migrate::pending_count(&db).await?;
    migrate::run(&db).await?;
    println!("applied {before} migration(s); database is up to date");
    db.close().await;
    Ok(())
}

async fn migrate_status(config: Config) -> anyhow::Result<()> {
    let db = Db::connect(&config).await?;
    let status = migrate::status(&db).await?;
    for m in &status {
        let state = if m.applied { "applied" } else { "pending" };
        println!("{state:<8} {} {}", m.version, m.description);
    }
    let pending = status.iter().filter(|m| !m.applied).count();
    println!("{} applied, {pending} pending", status.len() - pending);
    db.close().await;
    Ok(())
}
