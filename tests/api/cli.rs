//! The `iotsupport` binary as operators and scripts use it: exit codes, messages, `serve` on the
//! embedded default with graceful shutdown, and `migrate` / `migrate status`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_iotsupport");

/// Runs the binary in `dir` with only the given environment (plus PATH).
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("run iotsupport")
}

#[tokio::test]
async fn serve_with_no_configuration_becomes_ready_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port().to_string();
    let child = Command::new(BIN)
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .env("PORT", &port)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/health/readyz");
    let ready = eventually(Duration::from_secs(30), || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    assert!(ready, "serve did not become ready");
    assert!(dir.path().join("data/iotsupport.db").exists());
    assert!(dir.path().join("data/objects").is_dir());

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "exit status {:?}", output.status);
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(
        logs.contains("\"message\":\"listening\""),
        "JSON logs expected: {logs}"
    );
    assert!(logs.contains("stopped"), "{logs}");
}

#[test]
fn invalid_configuration_exits_2_naming_the_variable() {
    let dir = tempfile::TempDir::new().unwrap();
    let output = run(dir.path(), &["serve"], &[("MAX_FIRMWARES", "lots")]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("MAX_FIRMWARES"), "{stderr}");

    let output = run(dir.path(), &["serve"], &[("HOST", "0.0.0.0")]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("HOST") && stderr.contains("ADMIN_TOKEN"),
        "{stderr}"
    );

    // The parser sidecar: both settings or neither.
    let output = run(
        dir.path(),
        &["serve"],
        &[("PARSE_SIDECAR_URL", "http://127.0.0.1:8091")],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PARSE_SIDECAR_XFER_DIR"), "{stderr}");

    // An OIDC provider reached over plain HTTP on another machine needs saying so.
    let output = run(
        dir.path(),
        &["serve"],
        &[
            ("OIDC_ENABLED", "true"),
            ("OIDC_ISSUER_URL", "http://keycloak.lan:8080/realms/iot"),
            ("OIDC_AUDIENCE", "iotsupport"),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("OIDC_ISSUER_URL") && stderr.contains("OIDC_ALLOW_HTTP"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing created on a configuration error"
    );
}

/// A token signing key file that cannot sign (SEC1 instead of PKCS#8, junk, cut short) stops
/// `serve` with exit 2 naming the variable, before anything is created; it used to start, warn,
/// and fail every device token with a 500.
#[test]
fn a_signing_key_file_that_cannot_sign_stops_serve() {
    let dir = tempfile::TempDir::new().unwrap();
    for (name, text) in [
        (
            "sec1.pem",
            "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n",
        ),
        (
            "junk.pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let output = run(
            dir.path(),
            &["serve"],
            &[("DEVICE_TOKEN_SIGNING_KEY_FILE", path.to_str().unwrap())],
        );
        assert_eq!(output.status.code(), Some(2), "{name}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("DEVICE_TOKEN_SIGNING_KEY_FILE"),
            "{name}: {stderr}"
        );
    }
    assert!(!dir.path().join("data").exists(), "nothing created");
}

#[test]
fn secrets_do_not_appear_in_error_output() {
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port();
    let output = run(
        dir.path(),
        &["migrate"],
        &[(
            "DATABASE_URL",
            &format!("postgres://app:hunter2-secret@127.0.0.1:{port}/db"),
        )],
    );
    assert_eq!(output.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!all.contains("hunter2-secret"), "{all}");
}

#[test]
fn unknown_commands_exit_2() {
    let dir = tempfile::TempDir::new().unwrap();
    assert_eq!(run(dir.path(), &["frobnicate"], &[]).status.code(), Some(2));
}

/// How many migrations the binary embeds: one file per version in `migrations/sqlite` (the
/// PostgreSQL folder has the same versions).
fn migration_count() -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    std::fs::read_dir(&dir)
        .expect("read migrations/sqlite")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count()
}

async fn migrate_cycle(url: &str, dir: &Path) {
    let env = [("DATABASE_URL", url)];
    let n = migration_count();
    let status = run(dir, &["migrate", "status"], &env);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        text.contains("pending  20261129000001 core tables"),
        "{text}"
    );
    assert!(
        text.trim_end()
            .ends_with(&format!("0 applied, {n} pending")),
        "{text}"
    );

    let up = run(dir, &["migrate"], &env);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(String::from_utf8_lossy(&up.stdout).contains(&format!("applied {n} migration(s)")));

    let status = run(dir, &["migrate", "status"], &env);
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        text.contains("applied  20261129000002 jobs and outbox"),
        "{text}"
    );
    assert!(
        text.trim_end()
            .ends_with(&format!("{n} applied, 0 pending")),
        "{text}"
    );

    // Idempotent.
    let again = run(dir, &["migrate"], &env);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("applied 0 migration(s)"));
}

#[tokio::test]
async fn migrate_and_migrate_status_on_sqlite() {
    let dir = tempfile::TempDir::new().unwrap();
    let url = format!("sqlite://{}", dir.path().join("x.db").display());
    migrate_cycle(&url, dir.path()).await;
}

/// Run where the SQLite file is not (the wrong directory, a mistyped DATABASE_URL), the commands
/// that read a database create none: `migrate status` says all is pending, the others fail.
#[test]
fn commands_that_read_a_database_do_not_create_a_missing_sqlite_file() {
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("missing.db");
    let url = format!("sqlite://{}", file.display());
    let env = [("DATABASE_URL", url.as_str())];
    let status = run(dir.path(), &["migrate", "status"], &env);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(text.contains("does not exist yet"), "{text}");
    let n = migration_count();
    assert!(
        text.trim_end()
            .ends_with(&format!("0 applied, {n} pending")),
        "{text}"
    );
    for command in [&["reconcile"][..], &["rotation-job"][..]] {
        let output = run(dir.path(), command, &env);
        assert_eq!(output.status.code(), Some(1), "{command:?}");
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(stderr.contains("does not exist"), "{command:?}: {stderr}");
    }
    assert!(!file.exists(), "a command created the database file");
}

#[tokio::test]
async fn migrate_and_migrate_status_on_postgres() {
    let Some((admin, _)) = production_services("migrate_postgres") else {
        return;
    };
    let url = fresh_postgres_database(&admin).await;
    let dir = tempfile::TempDir::new().unwrap();
    migrate_cycle(&url, dir.path()).await;
}

/// `reconcile` against a local store directory that is not there scans nothing: it says so and
/// exits 1 instead of reporting every row dangling (as it does for a missing bucket).
#[tokio::test]
async fn reconcile_refuses_a_storage_directory_that_is_not_there() {
    let dir = tempfile::TempDir::new().unwrap();
    let url = format!("sqlite://{}", dir.path().join("x.db").display());
    let migrated = run(dir.path(), &["migrate"], &[("DATABASE_URL", &url)]);
    assert!(migrated.status.success());
    let output = run(
        dir.path(),
        &["reconcile"],
        &[("DATABASE_URL", &url), ("STORAGE_DIR", "./no-such-objects")],
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no-such-objects does not exist") && stderr.contains("STORAGE_DIR"),
        "{stderr}"
    );
    assert!(!dir.path().join("no-such-objects").exists());
}

/// `reconcile … | head`: a reader that goes away before the scan is printed is no failure (the
/// scan is done; `println!` panicked and exited 101).
#[tokio::test]
async fn reconcile_into_a_closed_pipe_exits_0() {
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::create_dir(dir.path().join("objects")).unwrap();
    let url = format!("sqlite://{}", dir.path().join("x.db").display());
    let env = [("DATABASE_URL", url.as_str()), ("STORAGE_DIR", "./objects")];
    assert!(run(dir.path(), &["migrate"], &env).status.success());
    let mut child = Command::new(BIN)
        .arg("reconcile")
        .current_dir(dir.path())
        .env_clear()
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reading end closes before anything is written.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn an_unreachable_database_exits_1() {
    let dir = tempfile::TempDir::new().unwrap();
    let url = format!("postgres://app:x@127.0.0.1:{}/db", free_port());
    let output = run(
        dir.path(),
        &["migrate", "status"],
        &[("DATABASE_URL", &url)],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).starts_with("error:"));
}
