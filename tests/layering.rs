//! The layering rule of ARCHITECTURE.md ("Layering"), checked on the source text of `src/`.
//!
//! Every path the code refers to — `use` trees (groups expanded), paths in expressions, types,
//! attributes and macro calls — is read with a small lexer (comments, doc comments and string
//! literals are skipped), made absolute when it starts with `crate`, `self` or `super` (inline
//! `mod … { }` blocks counted), and checked against the rules below for the file it is in. A
//! violation is reported as `file:line: path — rule`, all of them at once.
//!
//! What it does not see: an item reached through a glob re-export under another name, and a
//! relative path to a child module (`coredumps::insert` inside `db`), which cannot cross a layer.
//! A separate test target so that it runs in a second, with no database or object store.

#[path = "support/rust_source.rs"]
mod rust_source;

use std::path::Path;

use rust_source::{lex, rust_files, Lexed, Token};

/// The HTTP server stack: only the HTTP edge may use it.
const HTTP_CRATES: &[&str] = &["axum", "tower", "tower_http", "hyper", "hyper_util"];

/// Crates that do I/O or belong to a framework; the leaf modules (`fleet`, `layout`) use none.
const HEAVY_CRATES: &[&str] = &[
    "axum",
    "tower",
    "tower_http",
    "hyper",
    "hyper_util",
    "sqlx",
    "tokio",
    "tokio_util",
    "reqwest",
    "object_store",
    "utoipa",
];

/// The modules that use the database, so `db` may not use them (that would be a cycle), plus the
/// HTTP edge.
const ABOVE_DB: &[&str] = &[
    "events",
    "http",
    "firmware",
    "coredumps",
    "reconcile",
    "outbox",
    "presence",
    "jobs",
    "migrate_to_s3",
    "state",
    "startup",
    "cli",
];

/// axum's extractors whose rejection is a `text/plain` answer instead of our JSON envelope, and
/// `axum::Json`: handlers take `Json`, `Path` and `Query` from `src/http/extract.rs`.
const PLAIN_TEXT_EXTRACTORS: &[&str] = &[
    "Json",
    "Path",
    "Query",
    "Form",
    "RawForm",
    "RawPathParams",
    "Multipart",
];

/// Whether `path` names one of [`PLAIN_TEXT_EXTRACTORS`] (`axum::extract::Path`, `axum::Json`).
fn is_plain_text_extractor(path: &[String]) -> bool {
    let name = match path {
        [axum, extract, name, ..] if axum == "axum" && extract == "extract" => name,
        [axum, name, ..] if axum == "axum" => name,
        _ => return false,
    };
    PLAIN_TEXT_EXTRACTORS.contains(&name.as_str())
}

/// Where the HTTP edge is: the `http` module and the code that starts the service.
fn at_the_http_edge(file: &str) -> bool {
    file.starts_with("src/http/") || ["src/startup.rs", "src/main.rs", "src/cli.rs"].contains(&file)
}

/// `crate::storage::ObjectKey` and `crate::storage::InvalidKey`, what a leaf may know of storage.
fn is_storage_key(path: &[String]) -> bool {
    path.len() >= 3
        && path[1] == "storage"
        && ["ObjectKey", "InvalidKey", "key"].contains(&path[2].as_str())
}

/// One rule: the files it governs and the references it refuses there.
struct Rule {
    name: &'static str,
    governs: fn(&str) -> bool,
    refuses: fn(&str, &[String]) -> bool,
}

fn crate_module(path: &[String]) -> Option<&str> {
    (path.len() >= 2 && path[0] == "crate").then(|| path[1].as_str())
}

/// The object store's HTTP client: built on hyper's client as reqwest is (to bound its read
/// buffer), so it may use `hyper` and `hyper_util`, and nothing of the server side.
const S3_HTTP_CLIENT: &str = "src/storage/http_client.rs";

const RULES: &[Rule] = &[
    Rule {
        name: "only src/http/, startup, cli and main use the HTTP stack (axum, tower, tower_http, hyper)",
        governs: |file| !at_the_http_edge(file),
        refuses: |file, path| {
            let client_crate = ["hyper", "hyper_util"].contains(&path[0].as_str());
            HTTP_CRATES.contains(&path[0].as_str()) && !(file == S3_HTTP_CLIENT && client_crate)
        },
    },
    Rule {
        name: "only src/http/, startup, cli and main refer to crate::http",
        governs: |file| !at_the_http_edge(file),
        refuses: |_, path| crate_module(path) == Some("http"),
    },
    Rule {
        name: "db knows no domain: it refers to no module that uses the database, nor to http",
        governs: |file| file.starts_with("src/db/"),
        refuses: |_, path| crate_module(path).is_some_and(|m| ABOVE_DB.contains(&m)),
    },
    Rule {
        name: "storage refers to nothing of the crate but itself and config",
        governs: |file| file.starts_with("src/storage/"),
        refuses: |_, path| crate_module(path).is_some_and(|m| m != "storage" && m != "config"),
    },
    Rule {
        name: "fleet refers to nothing of the crate but itself and storage keys",
        governs: |file| file.starts_with("src/fleet/"),
        refuses: |_, path| {
            crate_module(path).is_some_and(|m| m != "fleet" && !is_storage_key(path))
        },
    },
    Rule {
        name: "layout refers to nothing of the crate but itself, fleet and storage keys",
        governs: |file| file == "src/layout.rs",
        refuses: |_, path| {
            crate_module(path)
                .is_some_and(|m| m != "layout" && m != "fleet" && !is_storage_key(path))
        },
    },
    Rule {
        name: "handlers take Json, Path and Query from src/http/extract.rs, whose rejections are \
               the JSON envelope; axum's answer in plain text",
        governs: |file| file.starts_with("src/http/") && file != "src/http/extract.rs",
        refuses: |_, path| is_plain_text_extractor(path),
    },
    Rule {
        name: "fleet and layout use no I/O or framework crate",
        governs: |file| file.starts_with("src/fleet/") || file == "src/layout.rs",
        refuses: |_, path| HEAVY_CRATES.contains(&path[0].as_str()),
    },
];

/// Known violations, each with the reason it is tolerated: (file, path prefix, reason). The test
/// fails when an entry no longer matches anything, so the list only shrinks.
const ALLOWED: &[(&str, &str, &str)] = &[];

/// The module path of a source file: `src/db/coredumps.rs` → `db::coredumps`, `src/db/mod.rs`
/// → `db`, `src/lib.rs` → the crate root.
fn module_of(file: &str) -> Vec<String> {
    let inner = file
        .strip_prefix("src/")
        .expect("a file under src/")
        .trim_end_matches(".rs");
    let mut parts: Vec<String> = inner.split('/').map(str::to_string).collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// A path the source refers to, absolute (`crate::…`) when it starts with `crate`, `self` or
/// `super`, as written otherwise (`axum::…`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reference {
    path: Vec<String>,
    line: usize,
}

impl Reference {
    fn text(&self) -> String {
        self.path.join("::")
    }
}

struct Scanner<'a> {
    tokens: &'a [Lexed],
}

impl Scanner<'_> {
    fn ident(&self, i: usize) -> Option<&str> {
        match self.tokens.get(i).map(|t| &t.token) {
            Some(Token::Ident(name)) => Some(name),
            _ => None,
        }
    }

    fn is(&self, i: usize, token: &Token) -> bool {
        self.tokens.get(i).map(|t| &t.token) == Some(token)
    }

    /// The paths of the path or use tree starting at `i` (after `prefix`), and the index after it.
    fn tree(&self, mut i: usize, prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
        let mut path = prefix;
        loop {
            if self.is(i, &Token::Punct('*')) {
                return (vec![path], i + 1);
            }
            if self.is(i, &Token::Punct('{')) {
                let mut paths = Vec::new();
                i += 1;
                while i < self.tokens.len() && !self.is(i, &Token::Punct('}')) {
                    let (inner, next) = self.tree(i, path.clone());
                    paths.extend(inner);
                    i = next;
                    // Skip `as alias` and anything else up to the next item.
                    while i < self.tokens.len()
                        && !self.is(i, &Token::Punct(','))
                        && !self.is(i, &Token::Punct('}'))
                    {
                        i += 1;
                    }
                    if self.is(i, &Token::Punct(',')) {
                        i += 1;
                    }
                }
                return (paths, i + 1);
            }
            let Some(segment) = self.ident(i) else {
                return (vec![path], i);
            };
            path.push(segment.to_string());
            i += 1;
            if !self.is(i, &Token::PathSep) {
                return (vec![path], i);
            }
            i += 1;
        }
    }

    /// Every reference in the file whose module path is `module`.
    fn references(&self, module: &[String]) -> Vec<Reference> {
        let mut found = Vec::new();
        // Inline modules (`mod tests { … }`): name and the brace depth inside them.
        let mut inline: Vec<(String, usize)> = Vec::new();
        let mut depth = 0;
        let mut pending_mod: Option<String> = None;
        let mut i = 0;
        while i < self.tokens.len() {
            let token = &self.tokens[i].token;
            let line = self.tokens[i].line;
            match token {
                Token::Punct('{') => {
                    depth += 1;
                    if let Some(name) = pending_mod.take() {
                        inline.push((name, depth));
                    }
                }
                Token::Punct('}') => {
                    if inline.last().is_some_and(|(_, d)| *d == depth) {
                        inline.pop();
                    }
                    depth -= 1;
                }
                Token::Punct(';') => pending_mod = None,
                Token::Ident(word) if word == "mod" => {
                    pending_mod = self.ident(i + 1).map(str::to_string);
                }
                _ => {}
            }
            let previous = i.checked_sub(1).map(|p| &self.tokens[p].token);
            let starts_path = match token {
                Token::Ident(_) => !matches!(previous, Some(Token::PathSep | Token::Punct('.'))),
                // A leading `::` (`::axum::Json`), not the `::` after a type (`Vec::<u8>::new`).
                Token::PathSep => {
                    !matches!(previous, Some(Token::Ident(_) | Token::Punct('>' | ')')))
                }
                _ => false,
            };
            if !starts_path {
                i += 1;
                continue;
            }
            let after_use = matches!(previous, Some(Token::Ident(w)) if w == "use" || w == "crate");
            let start = if matches!(token, Token::PathSep) {
                i + 1
            } else {
                i
            };
            let (paths, next) = self.tree(start, Vec::new());
            let here: Vec<String> = module
                .iter()
                .cloned()
                .chain(inline.iter().map(|(name, _)| name.clone()))
                .collect();
            for path in paths {
                if let Some(path) = resolve(path, &here) {
                    if path.len() >= 2 || after_use {
                        found.push(Reference { path, line });
                    }
                }
            }
            i = next.max(i + 1);
        }
        found
    }
}

/// Makes `path` absolute when it starts with `crate`, `self` or `super`; drops a trailing `self`
/// of a use group. `None` for an empty path or one that climbs above the crate.
fn resolve(mut path: Vec<String>, module: &[String]) -> Option<Vec<String>> {
    if path.last().is_some_and(|s| s == "self") && path.len() > 1 {
        path.pop();
    }
    let first = path.first()?.clone();
    let absolute = match first.as_str() {
        "self" => ["crate".to_string()]
            .into_iter()
            .chain(module.iter().cloned())
            .chain(path.into_iter().skip(1))
            .collect(),
        "super" => {
            let ups = path.iter().take_while(|s| *s == "super").count();
            let kept = module.len().checked_sub(ups)?;
            ["crate".to_string()]
                .into_iter()
                .chain(module[..kept].iter().cloned())
                .chain(path.into_iter().skip(ups))
                .collect()
        }
        _ => path,
    };
    Some(absolute)
}

/// The references in `text`, the source of `file` (relative to the crate, `src/…`).
fn references_in(file: &str, text: &str) -> Vec<Reference> {
    let tokens = lex(text);
    Scanner { tokens: &tokens }.references(&module_of(file))
}

/// Every violation in `file`: `file:line: path — rule`, with the allowlisted path prefix, if any.
fn violations_in(file: &str, text: &str) -> Vec<(String, Option<usize>)> {
    let mut out = Vec::new();
    for reference in references_in(file, text) {
        for rule in RULES {
            if (rule.governs)(file) && (rule.refuses)(file, &reference.path) {
                let path = reference.text();
                let allowed = ALLOWED.iter().position(|(f, prefix, _)| {
                    *f == file && (path == *prefix || path.starts_with(&format!("{prefix}::")))
                });
                out.push((
                    format!("{file}:{}: {path} — {}", reference.line, rule.name),
                    allowed,
                ));
            }
        }
    }
    out
}

/// References between top-level modules that close a cycle: `file:line: path — rule a → b → a`.
/// Allowlisted references do not count. A cycle means neither module can be understood, tested
/// or changed without the other; the one the rule exists for was `config` → `firmware::cache` →
/// `telemetry` → `config`.
fn cycles(files: &[(String, String)]) -> Vec<String> {
    use std::collections::{BTreeMap, BTreeSet, VecDeque};
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|(file, _)| module_of(file).first().cloned())
        .collect();
    // (from, to) → where it is first referred to.
    let mut edges: BTreeMap<(String, String), String> = BTreeMap::new();
    for (file, text) in files {
        let Some(from) = module_of(file).first().cloned() else {
            continue; // lib.rs and main.rs: the roots declare and start everything.
        };
        for reference in references_in(file, text) {
            let Some(to) = crate_module(&reference.path) else {
                continue;
            };
            let path = reference.text();
            let allowed = ALLOWED.iter().any(|(f, prefix, _)| {
                f == file && (path == *prefix || path.starts_with(&format!("{prefix}::")))
            });
            if to != from && modules.contains(to) && !allowed {
                edges
                    .entry((from.clone(), to.to_string()))
                    .or_insert_with(|| format!("{file}:{}: {path}", reference.line));
            }
        }
    }
    // The shortest way from `start` to `goal` along the edges, if any.
    let way = |start: &str, goal: &str| -> Option<Vec<String>> {
        let mut came_from: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = VecDeque::from([start.to_string()]);
        while let Some(at) = queue.pop_front() {
            if at == goal {
                let mut way = vec![at.clone()];
                while let Some(previous) = came_from.get(way.last().unwrap()) {
                    way.push(previous.clone());
                }
                way.reverse();
                return Some(way);
            }
            for (from, to) in edges.keys() {
                if *from == at && !came_from.contains_key(to) && to != start {
                    came_from.insert(to.clone(), at.clone());
                    queue.push_back(to.clone());
                }
            }
        }
        None
    };
    // One report per group of modules that all reach each other: its shortest cycle, with where
    // each of its references is, and the other modules caught in the group.
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut found = Vec::new();
    for module in &modules {
        if reported.contains(module) {
            continue;
        }
        let group: BTreeSet<String> = modules
            .iter()
            .filter(|other| {
                *other == module || (way(module, other).is_some() && way(other, module).is_some())
            })
            .cloned()
            .collect();
        if group.len() < 2 {
            continue;
        }
        let shortest = edges
            .keys()
            .filter(|(from, to)| group.contains(from) && group.contains(to))
            .filter_map(|(from, to)| {
                let back = way(to, from)?;
                Some([vec![from.clone()], back].concat())
            })
            .min_by_key(|cycle| cycle.len())
            .expect("a group has a cycle");
        let locations: Vec<&str> = shortest
            .windows(2)
            .map(|pair| edges[&(pair[0].clone(), pair[1].clone())].as_str())
            .collect();
        let others: Vec<&String> = group.iter().filter(|m| !shortest.contains(m)).collect();
        let mut report = format!(
            "{} — top-level modules form no cycle: {}",
            locations[0],
            shortest.join(" → ")
        );
        if locations.len() > 1 {
            report += &format!(" (then {})", locations[1..].join(", "));
        }
        if !others.is_empty() {
            report += &format!("; caught in the same cycle: {others:?}");
        }
        found.push(report);
        reported.extend(group);
    }
    found
}

#[test]
fn the_source_follows_the_layering_rule() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = rust_files(base, "src");
    assert!(files.len() > 50, "src/ not found under {}", base.display());
    let mut violations = Vec::new();
    let mut used = vec![false; ALLOWED.len()];
    for (file, text) in &files {
        for (violation, allowed) in violations_in(file, text) {
            match allowed {
                Some(entry) => used[entry] = true,
                None => violations.push(violation),
            }
        }
    }
    violations.extend(cycles(&files));
    assert!(
        violations.is_empty(),
        "{} layering violation(s) (see ARCHITECTURE.md, \"Layering\"):\n{}\n",
        violations.len(),
        violations.join("\n")
    );
    let stale: Vec<_> = ALLOWED
        .iter()
        .zip(used)
        .filter(|(_, used)| !used)
        .map(|((file, prefix, _), _)| format!("{file}: {prefix}"))
        .collect();
    assert!(
        stale.is_empty(),
        "allowlisted violations that are gone; remove them from ALLOWED: {stale:?}"
    );
}

// --- the scanner itself ------------------------------------------------------------------------

fn paths(file: &str, text: &str) -> Vec<String> {
    references_in(file, text)
        .iter()
        .map(Reference::text)
        .collect()
}

#[test]
fn comments_doc_comments_and_strings_are_not_references() {
    let source = r##"
        //! See `crate::http::auth` for how devices authenticate.
        /// Like crate::events::record.
        // use crate::http;
        /* crate::outbox::schedule /* nested crate::jobs */ crate::reconcile */
        const FILTER: &str = "info,tower_http=info";
        const RAW: &str = r#"use axum::Router; "crate::http""#;
        const C: char = '"';
        fn f<'a>(x: &'a str) -> &'a str { x }
        pub fn real() { crate::config::load(); }
    "##;
    assert_eq!(paths("src/db/x.rs", source), ["crate::config::load"]);
}

#[test]
fn use_groups_are_expanded_and_super_and_self_resolved() {
    let source = r#"
        use crate::{events, http::{self, auth::DeviceCaller as D}, db::*};
        use super::super::firmware::cache;
        use self::inner::Thing;
        use axum;
        fn f() { let _ = ::tower::ServiceBuilder::new(); let v = Vec::<u8>::new(); }
        #[cfg(test)]
        mod tests {
            use super::*;
            use super::super::Sibling;
        }
        fn g() { super::helper(); }
    "#;
    assert_eq!(
        paths("src/db/coredumps.rs", source),
        [
            "crate::events",
            "crate::http",
            "crate::http::auth::DeviceCaller",
            "crate::db",
            "crate::firmware::cache",
            "crate::db::coredumps::inner::Thing",
            "axum",
            "tower::ServiceBuilder::new",
            "crate::db::coredumps",
            "crate::db::Sibling",
            "crate::db::helper",
        ]
    );
}

#[test]
fn a_planted_violation_is_reported_with_file_line_and_rule() {
    let source = "//! The pool.\n\nuse crate::http;\nuse crate::db::Tx;\n";
    let violations: Vec<String> = violations_in("src/db/mod.rs", source)
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(
        violations[0].starts_with("src/db/mod.rs:3: crate::http — only src/http/"),
        "{violations:?}"
    );
    assert!(
        violations[1].starts_with("src/db/mod.rs:3: crate::http — db knows no domain"),
        "{violations:?}"
    );
    // The same line is fine at the HTTP edge.
    assert!(violations_in("src/http/mod.rs", source).is_empty());
    // Leaves: fleet may know storage keys, nothing else of the crate; layout may know fleet.
    let leaf = "use crate::storage::ObjectKey;\nuse crate::fleet::ModelCode;\nuse sqlx::Row;\n";
    let fleet: Vec<String> = violations_in("src/fleet/model_code.rs", leaf)
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert_eq!(fleet.len(), 1, "{fleet:?}");
    assert!(fleet[0].contains("sqlx::Row"), "{fleet:?}");
    let storage = violations_in("src/storage/key.rs", leaf);
    assert_eq!(storage.len(), 1, "{storage:?}");
    assert!(
        storage[0].0.contains("crate::fleet::ModelCode"),
        "{storage:?}"
    );
}

#[test]
fn axums_plain_text_extractors_are_reported_in_handlers_but_not_in_extract_rs() {
    let source = "use axum::extract::{Path, State};\nfn f(q: axum::extract::Query<X>) -> \
                  axum::Json<Y> { todo!() }\nuse axum::extract::rejection::PathRejection;\n";
    let violations: Vec<String> = violations_in("src/http/devices.rs", source)
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert_eq!(violations.len(), 3, "{violations:?}");
    assert!(
        violations[0].starts_with("src/http/devices.rs:1: axum::extract::Path — handlers take"),
        "{violations:?}"
    );
    assert!(
        violations[1].contains("axum::extract::Query"),
        "{violations:?}"
    );
    assert!(violations[2].contains("axum::Json"), "{violations:?}");
    assert!(violations_in("src/http/extract.rs", source).is_empty());
}

#[test]
fn a_cycle_between_modules_is_reported_where_it_closes() {
    let files = vec![
        (
            "src/config.rs".to_string(),
            "const X: u64 = crate::firmware::cache::DEFAULT;".to_string(),
        ),
        (
            "src/firmware/cache.rs".to_string(),
            "\n\nuse crate::telemetry;".to_string(),
        ),
        (
            "src/telemetry.rs".to_string(),
            "use crate::config::Config;".to_string(),
        ),
        (
            "src/storage/mod.rs".to_string(),
            "use crate::config::S3Config;".to_string(),
        ),
    ];
    assert_eq!(
        cycles(&files),
        [
            "src/config.rs:1: crate::firmware::cache::DEFAULT — top-level modules form no cycle: \
          config → firmware → telemetry → config (then src/firmware/cache.rs:3: \
          crate::telemetry, src/telemetry.rs:1: crate::config::Config)"
        ]
    );
}
