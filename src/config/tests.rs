//! Unit tests of configuration parsing.

use super::*;

fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from(&Env::from_pairs(pairs.iter().copied()))
}

#[test]
fn defaults_give_the_embedded_shape_on_loopback() {
    let c = config(&[]).unwrap();
    assert_eq!(c.database_kind, DatabaseKind::Sqlite);
    assert!(matches!(c.storage, StorageConfig::Local { .. }));
    assert_eq!(c.port, 3101);
    assert_eq!(c.max_coredumps, 20);
    assert_eq!(c.max_firmwares, 5);
    assert!(c.migrate_on_start);
    assert!(c.check_safe_to_serve().is_ok());
    assert_eq!(c.device_lookup_cache_ttl, Duration::from_secs(2));
    assert_eq!(c.firmware_cache_bytes, 32 * 1024 * 1024);
    assert_eq!(c.parse_cache_bytes, 32 * 1024 * 1024);
    assert_eq!(c.max_concurrent_coredump_uploads, 64);
}

#[test]
fn config_validation_has_a_budget_of_two_seconds_by_default() {
    assert_eq!(
        config(&[]).unwrap().config_validation_timeout,
        Duration::from_secs(2)
    );
    let c = config(&[("CONFIG_VALIDATION_TIMEOUT_SECONDS", "0.25")]).unwrap();
    assert_eq!(c.config_validation_timeout, Duration::from_millis(250));
    for value in ["0", "-1", "soon"] {
        let err = config(&[("CONFIG_VALIDATION_TIMEOUT_SECONDS", value)]).unwrap_err();
        assert_eq!(err.variable, "CONFIG_VALIDATION_TIMEOUT_SECONDS", "{value}");
    }
}

#[test]
fn zero_turns_the_device_caches_off() {
    let c = config(&[
        ("DEVICE_LOOKUP_CACHE_SECONDS", "0"),
        ("FIRMWARE_CACHE_BYTES", "0"),
        ("PARSE_CACHE_BYTES", "0"),
    ])
    .unwrap();
    assert!(c.device_lookup_cache_ttl.is_zero());
    assert_eq!(c.firmware_cache_bytes, 0);
    assert_eq!(c.parse_cache_bytes, 0);
}

#[test]
fn invalid_values_name_their_variable() {
    for (var, value) in [
        ("PORT", "eighty"),
        ("MAX_FIRMWARES", "0"),
        ("MAX_COREDUMPS", "-3"),
        ("HOST", "not-an-ip"),
        ("DATABASE_URL", "mysql://x"),
        ("ALLOW_UNAUTHENTICATED", "maybe"),
        ("LOG_FORMAT", "xml"),
        ("ADMIN_TOKEN", "short"),
        ("DEVICE_LOOKUP_CACHE_SECONDS", "31"),
        ("DEVICE_LOOKUP_CACHE_SECONDS", "-1"),
        ("FIRMWARE_CACHE_BYTES", "-5"),
    ] {
        let err = config(&[(var, value)]).unwrap_err();
        assert_eq!(err.variable, var, "{err}");
        assert!(err.to_string().contains(var));
    }
}

#[test]
fn job_concurrency_defaults_to_32_on_postgresql_and_4_on_sqlite() {
    let c = config(&[("DATABASE_URL", "postgres://app:pw@127.0.0.1/db")]).unwrap();
    assert_eq!(c.job_concurrency, 32);
    assert_eq!(config(&[]).unwrap().job_concurrency, 4);
    let c = config(&[
        ("DATABASE_URL", "postgres://app:pw@127.0.0.1/db"),
        ("JOB_CONCURRENCY", "2"),
    ])
    .unwrap();
    assert_eq!(c.job_concurrency, 2);
}

#[test]
fn job_concurrency_on_postgresql_leaves_ten_connections_for_requests_and_two_for_listeners() {
    let with = |n: &str| {
        config(&[
            ("DATABASE_URL", "postgres://app:pw@127.0.0.1/db"),
            ("JOB_CONCURRENCY", n),
        ])
    };
    assert_eq!(with("52").unwrap().job_concurrency, 52);
    let refused = with("53").unwrap_err().to_string();
    assert!(refused.contains("JOB_CONCURRENCY"), "{refused}");
    assert!(refused.contains("at most 52"), "{refused}");
    // SQLite's pool is not sized by it.
    assert_eq!(
        config(&[("JOB_CONCURRENCY", "100")])
            .unwrap()
            .job_concurrency,
        100
    );
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let c = config(&[
        ("ADMIN_TOKEN", "super-secret-admin-token"),
        ("DATABASE_URL", "postgres://app:hunter2@127.0.0.1/db"),
        ("S3_ENDPOINT_URL", "http://127.0.0.1:9000"),
        ("S3_ACCESS_KEY_ID", "key-id"),
        ("S3_SECRET_ACCESS_KEY", "s3-secret-value"),
        ("OIDC_ENABLED", "true"),
        ("OIDC_ISSUER_URL", "https://sso.example/realms/iot"),
        ("OIDC_AUDIENCE", "iotsupport"),
        ("OIDC_CLIENT_SECRET", "oidc-client-secret"),
    ])
    .unwrap();
    let printed = format!("{c:?}");
    for secret in [
        "super-secret-admin-token",
        "hunter2",
        "s3-secret-value",
        "oidc-client-secret",
    ] {
        assert!(!printed.contains(secret), "{secret} leaked in {printed}");
    }
}

#[test]
fn an_open_admin_api_is_refused_beyond_loopback() {
    let c = config(&[("HOST", "0.0.0.0")]).unwrap();
    assert_eq!(c.check_safe_to_serve().unwrap_err().variable, "HOST");
    let c = config(&[("HOST", "0.0.0.0"), ("ALLOW_UNAUTHENTICATED", "true")]).unwrap();
    assert!(c.check_safe_to_serve().is_ok());
    let c = config(&[("HOST", "0.0.0.0"), ("ADMIN_TOKEN", "0123456789abcdef")]).unwrap();
    assert!(c.check_safe_to_serve().is_ok());
}

#[test]
fn oidc_settings_without_oidc_enabled_leave_nothing_open_by_mistake() {
    // On loopback too: behind a proxy on this machine the open API would be public.
    let c = config(&[
        ("OIDC_ISSUER_URL", "https://sso.example/realms/iot"),
        ("OIDC_AUDIENCE", "iotsupport"),
    ])
    .unwrap();
    let err = c.check_safe_to_serve().unwrap_err();
    assert_eq!(err.variable, "OIDC_ENABLED");
    assert!(err.to_string().contains("OIDC_ISSUER_URL"), "{err}");
    // Another credential, or an explicit open API, is what the operator meant.
    for more in [
        ("ADMIN_TOKEN", "0123456789abcdef"),
        ("ALLOW_UNAUTHENTICATED", "true"),
    ] {
        let c = config(&[("OIDC_CLIENT_SECRET", "s"), more]).unwrap();
        assert!(c.check_safe_to_serve().is_ok(), "{more:?}");
    }
    // An empty value is unset, as everywhere.
    let c = config(&[("OIDC_ISSUER_URL", "")]).unwrap();
    assert!(c.check_safe_to_serve().is_ok());
}

#[test]
fn half_an_s3_key_pair_is_refused() {
    let s3 = |more: (&'static str, &'static str)| {
        config(&[("S3_ENDPOINT_URL", "http://127.0.0.1:5055"), more])
    };
    assert_eq!(
        s3(("S3_ACCESS_KEY_ID", "k")).unwrap_err().variable,
        "S3_SECRET_ACCESS_KEY"
    );
    assert_eq!(
        s3(("S3_SECRET_ACCESS_KEY", "s")).unwrap_err().variable,
        "S3_ACCESS_KEY_ID"
    );
}

#[test]
fn an_empty_local_admin_name_reports_no_name() {
    assert_eq!(
        config(&[]).unwrap().local_admin.name.as_deref(),
        Some("Administrator")
    );
    assert_eq!(
        config(&[("LOCAL_ADMIN_NAME", "")])
            .unwrap()
            .local_admin
            .name,
        None
    );
    assert_eq!(
        config(&[("LOCAL_ADMIN_NAME", "Ops")])
            .unwrap()
            .local_admin
            .name
            .as_deref(),
        Some("Ops")
    );
}

#[test]
fn job_concurrency_is_bounded_on_sqlite_too() {
    let err = config(&[("JOB_CONCURRENCY", "4611686018427387904")]).unwrap_err();
    assert_eq!(err.variable, "JOB_CONCURRENCY");
    assert_eq!(
        config(&[("JOB_CONCURRENCY", "8")]).unwrap().job_concurrency,
        8
    );
}

#[test]
fn a_url_with_user_info_is_not_loopback() {
    assert!(is_loopback_url("http://127.0.0.1:9000"));
    assert!(is_loopback_url("http://localhost/x"));
    assert!(is_loopback_url("http://[::1]:9000/"));
    assert!(!is_loopback_url("http://127.0.0.1:1@evil.example/"));
    assert!(!is_loopback_url("http://evil.example/127.0.0.1"));
    let err = config(&[("S3_ENDPOINT_URL", "http://127.0.0.1:1@s3.example.net")]).unwrap_err();
    assert_eq!(err.variable, "S3_USE_SSL");
}

#[test]
fn an_invalid_baseurl_is_named_as_set() {
    assert_eq!(
        config(&[("BASEURL", "ftp://x")]).unwrap_err().variable,
        "BASEURL"
    );
    assert_eq!(
        config(&[("DEVICE_BASEURL", "ftp://x")])
            .unwrap_err()
            .variable,
        "DEVICE_BASEURL"
    );
}

#[test]
fn oidc_needs_an_issuer_and_an_audience() {
    assert_eq!(
        config(&[("OIDC_ENABLED", "true")]).unwrap_err().variable,
        "OIDC_ISSUER_URL"
    );
    let err = config(&[
        ("OIDC_ENABLED", "true"),
        ("OIDC_ISSUER_URL", "https://sso.example/realms/iot"),
    ])
    .unwrap_err();
    assert_eq!(err.variable, "OIDC_AUDIENCE");
    let c = config(&[
        ("OIDC_ENABLED", "true"),
        ("OIDC_ISSUER_URL", "https://sso.example/realms/iot"),
        ("OIDC_AUDIENCE", "iotsupport"),
        ("OIDC_CLOCK_SKEW_SECONDS", "5"),
        ("HOST", "0.0.0.0"),
    ])
    .unwrap();
    assert_eq!(c.oidc.as_ref().unwrap().clock_skew, Duration::from_secs(5));
    assert!(
        c.check_safe_to_serve().is_ok(),
        "OIDC counts as admin authentication"
    );
}

#[test]
fn a_plain_http_oidc_issuer_off_loopback_needs_an_explicit_setting() {
    let oidc = |issuer: &'static str, more: &[(&'static str, &'static str)]| {
        let mut vars = vec![
            ("OIDC_ENABLED", "true"),
            ("OIDC_ISSUER_URL", issuer),
            ("OIDC_AUDIENCE", "iotsupport"),
        ];
        vars.extend_from_slice(more);
        config(&vars)
    };
    let err = oidc("http://keycloak.lan:8080/realms/iot", &[]).unwrap_err();
    assert_eq!(err.variable, "OIDC_ISSUER_URL");
    assert!(err.to_string().contains("OIDC_ALLOW_HTTP"), "{err}");
    assert!(oidc(
        "http://keycloak.lan:8080/realms/iot",
        &[("OIDC_ALLOW_HTTP", "true")]
    )
    .is_ok());
    assert!(oidc("http://127.0.0.1:8080/realms/iot", &[]).is_ok());
    assert!(oidc("https://sso.example/realms/iot", &[]).is_ok());
}

#[test]
fn plain_http_s3_needs_ssl_off_unless_loopback() {
    let err = config(&[("S3_ENDPOINT_URL", "http://s3.example.net")]).unwrap_err();
    assert_eq!(err.variable, "S3_USE_SSL");
    assert!(config(&[
        ("S3_ENDPOINT_URL", "http://s3.example.net"),
        ("S3_USE_SSL", "false")
    ])
    .is_ok());
    assert!(config(&[("S3_ENDPOINT_URL", "http://127.0.0.1:5055")]).is_ok());
}

#[test]
fn trusted_proxies_are_loopback_by_default_and_take_addresses_or_networks() {
    let c = config(&[]).unwrap();
    let loopback: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    assert!(c.trusted_proxies.iter().any(|n| n.contains(&loopback)));
    assert!(config(&[("TRUSTED_PROXIES", "none")])
        .unwrap()
        .trusted_proxies
        .is_empty());
    let nets = config(&[("TRUSTED_PROXIES", " 10.0.0.5 , 172.16.0.0/12, ::1")])
        .unwrap()
        .trusted_proxies;
    assert_eq!(nets.len(), 3);
    let inside: std::net::IpAddr = "172.20.1.1".parse().unwrap();
    let beside: std::net::IpAddr = "10.0.0.6".parse().unwrap();
    assert!(nets.iter().any(|n| n.contains(&inside)));
    assert!(!nets.iter().any(|n| n.contains(&beside)));
    for bad in ["10.0.0.0/40", "proxy.local"] {
        let err = config(&[("TRUSTED_PROXIES", bad)]).unwrap_err();
        assert_eq!(err.variable, "TRUSTED_PROXIES");
    }
}

#[test]
fn values_that_would_overflow_time_arithmetic_are_refused() {
    let mqtt = ("MQTT_URL", "mqtt://127.0.0.1:1883");
    for (var, value) in [
        ("ROTATION_TIMEOUT_SECONDS", "999999999999"),
        ("ROTATION_TIMEOUT_SECONDS", "inf"),
        ("JOB_LEASE_SECONDS", "NaN"),
        ("ROTATION_CRITICAL_THRESHOLD_DAYS", "100000000"),
        ("MQTT_NOTIFICATIONS_PER_SECOND", "inf"),
        ("MQTT_NOTIFICATIONS_PER_SECOND", "NaN"),
        ("MQTT_NOTIFICATIONS_PER_SECOND", "1e12"),
        ("DEVICE_LOG_RETENTION_DAYS", "200000000000"),
        ("DEVICE_LOG_RETENTION_DAYS", "inf"),
        ("DEVICE_LOG_RETENTION_DAYS", "NaN"),
    ] {
        let err = config(&[mqtt, (var, value)]).unwrap_err();
        assert_eq!(err.variable, var, "{value}: {err}");
        if var.starts_with("DEVICE_LOG") {
            // Read without MQTT too.
            let err = config(&[(var, value)]).unwrap_err();
            assert_eq!(err.variable, var, "{value}: {err}");
        }
    }
    // The largest values allowed still work.
    let c = config(&[
        mqtt,
        ("ROTATION_TIMEOUT_SECONDS", "3155760000"),
        ("ROTATION_CRITICAL_THRESHOLD_DAYS", "36525"),
        ("DEVICE_LOG_RETENTION_DAYS", "36525"),
        ("MQTT_NOTIFICATIONS_PER_SECOND", "100000"),
    ])
    .unwrap();
    assert_eq!(c.rotation.timeout, env::MAX_DURATION);
    let now = chrono::Utc::now();
    let _ = now - chrono::Duration::from_std(c.rotation.timeout).unwrap();
    let retention = c.device_logs.retention;
    let _ = now - chrono::Duration::from_std(retention).unwrap();
}

#[test]
fn values_that_would_panic_later_are_refused_at_start() {
    let oidc = [
        ("OIDC_ENABLED", "true"),
        ("OIDC_ISSUER_URL", "https://sso.example/realms/iot"),
        ("OIDC_AUDIENCE", "iotsupport"),
    ];
    for (var, value) in [
        // Subtracted from the time in whole seconds by the token check: it wrapped around.
        ("OIDC_CLOCK_SKEW_SECONDS", "2000000000"),
        ("OIDC_CLOCK_SKEW_SECONDS", "-1"),
        // Heartbeats every third of it: a zero interval panicked in every job.
        ("JOB_LEASE_SECONDS", "0.000000001"),
        ("JOB_LEASE_SECONDS", "0.5"),
        // Semaphores of this size panicked at start.
        ("HTTP_MAX_CONNECTIONS", "4611686018427387904"),
        ("MAX_CONCURRENT_COREDUMP_UPLOADS", "4611686018427387904"),
        ("HTTP_MAX_CONNECTIONS", "0"),
    ] {
        let mut vars = oidc.to_vec();
        vars.push((var, value));
        let err = config(&vars).unwrap_err();
        assert_eq!(err.variable, var, "{value}: {err}");
    }
    let c = config(&[
        oidc[0],
        oidc[1],
        oidc[2],
        ("OIDC_CLOCK_SKEW_SECONDS", "0"),
        ("JOB_LEASE_SECONDS", "1"),
        ("HTTP_MAX_CONNECTIONS", "1000000"),
    ])
    .unwrap();
    assert_eq!(c.oidc.unwrap().clock_skew, Duration::ZERO);
    assert_eq!(c.job_lease, Duration::from_secs(1));
}

#[test]
fn wifi_credentials_keep_their_spaces() {
    let c = config(&[
        ("WIFI_SSID", " Home net "),
        ("WIFI_PASSWORD", "  pass word "),
    ])
    .unwrap();
    assert_eq!(c.credentials.wifi_ssid.as_deref(), Some(" Home net "));
    assert_eq!(
        c.credentials.wifi_password.as_ref().map(|p| p.expose()),
        Some("  pass word ")
    );
    // Set but empty still counts as unset.
    assert!(config(&[("WIFI_PASSWORD", "")])
        .unwrap()
        .credentials
        .wifi_password
        .is_none());
}

#[test]
fn s3_settings_without_an_endpoint_are_refused_not_taken_for_the_local_directory() {
    for var in ["S3_BUCKET_NAME", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"] {
        let err = config(&[(var, "x-value")]).unwrap_err();
        assert_eq!(err.variable, "S3_ENDPOINT_URL", "{var}: {err}");
        assert!(err.to_string().contains(var), "{err}");
    }
    assert!(matches!(
        config(&[]).unwrap().storage,
        StorageConfig::Local { .. }
    ));
}

#[test]
fn a_broker_url_that_is_refused_is_not_echoed() {
    for var in ["MQTT_URL", "DEVICE_MQTT_URL"] {
        let err = config(&[(var, "operator:hunter2@broker.lan:1883")]).unwrap_err();
        assert_eq!(err.variable, var);
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}

#[test]
fn allowed_hosts_are_names_without_ports() {
    let c = config(&[("ALLOWED_HOSTS", " IOT.example.com , iot.lan. ,")]).unwrap();
    assert_eq!(c.allowed_hosts, ["iot.example.com", "iot.lan"]);
    assert!(config(&[]).unwrap().allowed_hosts.is_empty());
    for bad in ["iot.lan:3101", "http://iot.lan", "bad_name.lan", "a..b"] {
        let err = config(&[("ALLOWED_HOSTS", bad)]).unwrap_err();
        assert_eq!(err.variable, "ALLOWED_HOSTS", "{bad}");
    }
}

#[test]
fn the_parser_sidecar_needs_both_settings_and_a_url() {
    let url = ("PARSE_SIDECAR_URL", "http://127.0.0.1:8091");
    let dir = ("PARSE_SIDECAR_XFER_DIR", "/tmp/xfer");
    assert_eq!(
        config(&[url]).unwrap_err().variable,
        "PARSE_SIDECAR_XFER_DIR"
    );
    assert_eq!(config(&[dir]).unwrap_err().variable, "PARSE_SIDECAR_URL");
    for bad in ["not a url", "ftp://127.0.0.1/x"] {
        let err = config(&[("PARSE_SIDECAR_URL", bad), dir]).unwrap_err();
        assert_eq!(err.variable, "PARSE_SIDECAR_URL", "{bad}");
    }
    let c = config(&[("PARSE_SIDECAR_URL", "http://127.0.0.1:8091/"), dir]).unwrap();
    assert_eq!(
        c.parse_sidecar_url.as_deref(),
        Some("http://127.0.0.1:8091")
    );
}
