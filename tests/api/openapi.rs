//! The OpenAPI document (`/api/docs/openapi.json`) against the routes the service really has:
//! every routed method and path is documented, every documented one is routed, every operation
//! states who may call it, and every schema it refers to is there.
//!
//! The document is generated from `#[utoipa::path]` annotations, which are written next to the
//! handlers but listed by hand in `src/http/docs.rs`, while the router is assembled from each
//! feature module's `router()`: nothing ties the two together at compile time (`utoipa-axum`
//! would, at the price of rewriting every router). So the routes are read from the source: every
//! `.route("<path>", <method router>)` call in `src/http/`, with the methods named in the method
//! router (`get(…).delete(…)`, `axum::routing::delete(…)`). `.nest`, `route_service` and method
//! routers the scan cannot read (`any`, `on`) make the test fail until it learns them.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::helpers::*;
use crate::rust_source::{lex, rust_files, Lexed, Token};

/// Routed on purpose without being documented.
const NOT_DOCUMENTED_BY_DESIGN: &[(&str, &str, &str)] = &[
    (
        "GET",
        "/api/docs",
        "the Swagger UI page for people reading the document; it is no API",
    ),
    (
        "GET",
        "/api/docs/openapi.json",
        "the document itself; describing it in itself tells a client nothing it does not have",
    ),
];

/// Routed without being documented because a static route of the same shape exists: axum prefers
/// `…/firmware/versions` and `…/firmware/current` over `…/firmware/{version}`, so deleting a
/// version named `versions` or `current` needs routes of its own. They are the documented
/// operation on the template (third column) for those two values, not operations of their own.
const SHADOWED_BY_A_STATIC_ROUTE: &[(&str, &str, &str)] = &[
    (
        "DELETE",
        "/api/device-models/{id}/firmware/versions",
        "/api/device-models/{id}/firmware/{version}",
    ),
    (
        "DELETE",
        "/api/device-models/{id}/firmware/current",
        "/api/device-models/{id}/firmware/{version}",
    ),
];

// TODO(issue 13): routes that should be documented and are not yet; documenting them is work in
// `src/http/` (an annotation and an entry in `docs.rs`). Empty today: the check found none
// besides those above. Add an entry only with the issue it waits for; remove it when documented.
const KNOWN_UNDOCUMENTED: &[(&str, &str)] = &[];

/// Operations anyone may call, so they state no `security`.
const PUBLIC_OPERATIONS: &[(&str, &str)] = &[
    ("GET", "/health/healthz"),
    ("GET", "/health/readyz"),
    ("GET", "/metrics"),
    // Signing in and out: nothing to authenticate yet (or any more).
    ("GET", "/api/auth/login"),
    ("POST", "/api/auth/login"),
    ("GET", "/api/auth/callback"),
    ("GET", "/api/auth/logout"),
    ("POST", "/api/auth/logout"),
    // The device's token endpoint authenticates the client itself (RFC 6749 client
    // credentials); the JWKS is public by nature.
    ("POST", "/api/iot/token"),
    ("GET", "/api/iot/jwks.json"),
];

const METHODS: [&str; 8] = [
    "get", "post", "put", "delete", "patch", "head", "options", "trace",
];

pub type Operation = (String, String);

fn operation(method: &str, path: &str) -> Operation {
    (method.to_ascii_uppercase(), path.to_string())
}

/// A path in OpenAPI's template form: axum's `{id}` as is, `:id` and `*rest` (axum 0.7) as
/// `{id}` and `{rest}`.
fn template(path: &str) -> String {
    path.split('/')
        .map(|segment| match segment.strip_prefix([':', '*']) {
            Some(name) => format!("{{{name}}}"),
            None => segment.replacen("{*", "{", 1),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The (method, path) pairs of every `.route("<path>", <method router>)` in `tokens`.
fn routes_in(file: &str, tokens: &[Lexed]) -> Vec<Operation> {
    let ident = |i: usize, name: &str| matches!(tokens.get(i), Some(Lexed { token: Token::Ident(n), .. }) if n == name);
    let punct = |i: usize, c: char| matches!(tokens.get(i), Some(Lexed { token: Token::Punct(p), .. }) if *p == c);
    let mut routes = Vec::new();
    for i in 0..tokens.len() {
        let line = tokens[i].line;
        for unsupported in ["nest", "nest_service", "route_service", "fallback_service"] {
            assert!(
                !(punct(i, '.') && ident(i + 1, unsupported) && punct(i + 2, '(')),
                "{file}:{line}: `.{unsupported}(` — teach tests/api/openapi.rs to read it"
            );
        }
        if !(punct(i, '.') && ident(i + 1, "route") && punct(i + 2, '(')) {
            continue;
        }
        let Some(Lexed {
            token: Token::Str(path),
            ..
        }) = tokens.get(i + 3)
        else {
            panic!("{file}:{line}: a route whose path is not a string literal");
        };
        // The method router: everything up to the `)` that closes `.route(`.
        let mut depth = 1;
        let mut j = i + 3;
        let mut methods = Vec::new();
        while depth > 0 {
            j += 1;
            match &tokens.get(j).expect("a closed .route(").token {
                Token::Punct('(') => depth += 1,
                Token::Punct(')') => depth -= 1,
                Token::Ident(name) if punct(j + 1, '(') => {
                    if METHODS.contains(&name.as_str()) {
                        methods.push(name.clone());
                    }
                    assert!(
                        !matches!(name.as_str(), "any" | "on" | "method_routing"),
                        "{file}:{line}: `{name}(` in the method router of {path} — teach \
                         tests/api/openapi.rs which methods it routes"
                    );
                }
                _ => {}
            }
        }
        assert!(
            !methods.is_empty(),
            "{file}:{line}: no method found in the router of {path}"
        );
        routes.extend(methods.iter().map(|m| operation(m, &template(path))));
    }
    routes
}

/// Where the web UI's pages are routed: HTML for people, not operations of the API, so neither
/// documented nor answering with the JSON envelope (`ui_pages.rs` tests them).
const UI_PAGES: &str = "src/http/ui/";

/// Every API route in `src/http/` (also read by `request_envelope.rs`), the UI's pages left out.
pub fn routed() -> BTreeSet<Operation> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut routes = BTreeSet::new();
    for (file, text) in rust_files(base, "src/http") {
        if file.starts_with(UI_PAGES) {
            continue;
        }
        for route in routes_in(&file, &lex(&text)) {
            assert!(
                routes.insert(route.clone()),
                "{file}: {route:?} routed twice"
            );
        }
    }
    routes
}

/// Every (method, path) of the document's `paths`.
fn documented(doc: &Value) -> BTreeSet<Operation> {
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            if METHODS.contains(&method.as_str()) {
                operations.insert(operation(method, path));
            }
        }
    }
    operations
}

/// Every `$ref` anywhere in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(target)) => out.push(target.clone()),
                    _ => refs(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

fn set(list: impl IntoIterator<Item = (String, String)>) -> BTreeSet<Operation> {
    list.into_iter().collect()
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_is_routed() {
    let Some(app) = spawn_app(Stack::Embedded, "openapi_routes").await else {
        return;
    };
    let doc = app.openapi().await;
    let routed = routed();
    let documented = documented(&doc);
    assert!(
        routed.len() >= 20 && routed.contains(&operation("get", "/api/iot/firmware")),
        "the scan of src/http/ found too little: {routed:?}"
    );

    let by_design = set(NOT_DOCUMENTED_BY_DESIGN
        .iter()
        .map(|(m, p, _)| operation(m, p)));
    let shadowed = set(SHADOWED_BY_A_STATIC_ROUTE
        .iter()
        .map(|(m, p, _)| operation(m, p)));
    let known = set(KNOWN_UNDOCUMENTED.iter().map(|(m, p)| operation(m, p)));
    for (method, path, template) in SHADOWED_BY_A_STATIC_ROUTE {
        assert!(
            documented.contains(&operation(method, template)),
            "{method} {path} is said to be covered by {template}, which is not documented"
        );
    }

    let undocumented: Vec<&Operation> = routed
        .difference(&documented)
        .filter(|op| !by_design.contains(op) && !shadowed.contains(op) && !known.contains(op))
        .collect();
    assert!(
        undocumented.is_empty(),
        "routed but not in /api/docs/openapi.json (add a #[utoipa::path] annotation and list it \
         in src/http/docs.rs): {undocumented:?}"
    );
    let not_routed: Vec<&Operation> = documented.difference(&routed).collect();
    assert!(
        not_routed.is_empty(),
        "documented but not routed: {not_routed:?}"
    );
    // The allowlists hold only what is true today, so they shrink when it stops being true.
    let exceptions: Vec<&Operation> = by_design.iter().chain(&shadowed).chain(&known).collect();
    for op in exceptions {
        assert!(routed.contains(op), "{op:?} is allowlisted but not routed");
        assert!(
            !documented.contains(op),
            "{op:?} is documented now: remove it from its allowlist"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn every_operation_states_who_may_call_it_and_every_schema_it_names_exists() {
    let Some(app) = spawn_app(Stack::Embedded, "openapi_security").await else {
        return;
    };
    let doc = app.openapi().await;
    let public = set(PUBLIC_OPERATIONS.iter().map(|(m, p)| operation(m, p)));
    let mut open = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !op["security"].is_array() {
                open.insert(operation(method, path));
            }
        }
    }
    assert_eq!(
        open, public,
        "operations without `security` (a role) must be exactly the public ones"
    );

    let mut targets = Vec::new();
    refs(&doc, &mut targets);
    assert!(!targets.is_empty());
    for target in targets {
        let name = target
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {target}"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "$ref {target} names no schema"
        );
    }
    assert!(doc["components"]["schemas"]["FirmwareVersionList"].is_object());
    app.stop().await;
}

#[test]
fn the_route_scan_reads_method_routers_and_ignores_comments_and_strings() {
    let source = r#"
        // .route("/commented", get(x))
        /* .route("/blocked", post(x)) */
        pub fn router() -> Router<AppState> {
            let _ = ".route(\"/quoted\", get(x))";
            Router::new()
                .route("/api/a/{id}", get(fetch).put(update).delete(remove))
                .route(
                    "/api/b",
                    axum::routing::delete(super::handlers::remove_all),
                )
                .route("/api/c/:id", post(upload.layer(DefaultBodyLimit::disable())))
        }
    "#;
    let routes = routes_in("probe.rs", &lex(source));
    let expected: Vec<Operation> = [
        ("GET", "/api/a/{id}"),
        ("PUT", "/api/a/{id}"),
        ("DELETE", "/api/a/{id}"),
        ("DELETE", "/api/b"),
        ("POST", "/api/c/{id}"),
    ]
    .iter()
    .map(|(m, p)| operation(m, p))
    .collect();
    assert_eq!(routes, expected);
}

#[test]
#[should_panic(expected = "`.nest(`")]
fn a_nested_router_is_refused_until_the_scan_reads_it() {
    routes_in("probe.rs", &lex(r#"Router::new().nest("/api", inner())"#));
}
