//! `iotsupport`: parse the command line, read the configuration, start logging, dispatch.

use std::process::ExitCode;

use clap::Parser;
use iotsupport::cli::{self, Cli};
use iotsupport::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(done) = cli::run_without_config(&cli) {
        return done;
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(cli::EXIT_USAGE);
        }
    };
    iotsupport::telemetry::init_logging(config.log_format);
    cli::run(cli, config).await
}
