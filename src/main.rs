//! `iotsupport`: parse the command line, read the configuration, start logging, dispatch.

use std::process::ExitCode;

use clap::Parser;
use iotsupport::cli::{self, Cli};
use iotsupport::config::Config;

fn main() -> ExitCode {
    limit_malloc_arenas();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(cli::EXIT_FAILURE)
        }
    }
}

/// glibc gives each thread that allocates an arena of its own (up to eight per core), and memory
/// freed into one arena is not reused by the others. With 256 concurrent uncached downloads on
/// two cores the service peaked at 60-64 MiB with the default and 53-55 MiB with one arena, at
/// the same throughput; a backlog of parses drains about 5 % slower (bench/README.md, "Stop
/// 29"). So one arena, unless `MALLOC_ARENA_MAX` (or `GLIBC_TUNABLES`' `glibc.malloc.arena_max`)
/// says otherwise. Measured on two cores only: on many cores, more parses and downloads contend
/// for the one arena's lock.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc.arena_max"));
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() && !tuned {
        // SAFETY: called first thing in `main`, before any other thread exists; mallopt only
        // sets a parameter of the allocator.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

async fn run() -> ExitCode {
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
