//! Bounds on a model's config schema, checked before it is compiled, so that validating a device
//! config against it costs a bounded amount of work.
//!
//! Validation visits every subschema that applies to each part of the config, and a `$ref` is
//! followed every time it is reached: 2 KB of definitions whose `$ref`s fan out 10 ways per level
//! are 10⁹ subschemas at depth 9. So the schema is measured as the validator sees it, with every
//! `$ref` replaced by its target ("expanded"):
//!
//! - at most [`MAX_SCHEMA_BYTES`] of text;
//! - at most [`MAX_SCHEMA_DEPTH`] subschemas nested in each other, `$ref`s counted as a level;
//! - at most [`MAX_SCHEMA_EXPANSION`] subschemas in the expanded schema (counted without building
//!   it: each subschema's expanded size is computed once);
//! - no `$ref` cycle (a recursive schema's expansion grows with the config it validates);
//! - at most [`MAX_SCHEMA_PATTERNS`] regular expressions (`pattern`, `patternProperties`), each
//!   compiled within [`PATTERN_SIZE_LIMIT`] bytes and run with at most [`PATTERN_BACKTRACKS`]
//!   backtracking steps (`super::config` builds the validator with those): 64 KiB of
//!   `(\w|-){400}` patterns compiled to gigabytes, and one pattern with catastrophic
//!   backtracking ran for seconds per string;
//! - references only within the schema (`#`, `#/json/pointer`, `#anchor`) and `$id` only at the
//!   top, so that every reference resolves here exactly as the validator resolves it.
//!
//! A device config schema describes a settings object: tens of properties, a few shared
//! definitions; a few hundred subschemas expanded, five or six levels deep. The limits are far
//! above that and far below what takes a noticeable time to validate.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::config::InvalidConfig;

/// Longest schema text accepted (64 KiB).
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// Deepest nesting of subschemas, `$ref`s followed and counted as a level.
pub const MAX_SCHEMA_DEPTH: usize = 32;
/// Most subschemas in the schema with every `$ref` replaced by its target.
pub const MAX_SCHEMA_EXPANSION: u64 = 10_000;
/// Most regular expressions in a schema (`pattern` values and `patternProperties` names).
pub const MAX_SCHEMA_PATTERNS: usize = 100;
/// The compiled size one pattern may take (and its lazy DFA's cache), in bytes.
pub const PATTERN_SIZE_LIMIT: usize = 256 * 1024;
/// Backtracking steps one pattern may take on one string before the match fails.
pub const PATTERN_BACKTRACKS: usize = 100_000;

/// Keywords whose value is a subschema, or an array of subschemas (`items` is either).
const SUBSCHEMA_KEYWORDS: &[&str] = &[
    "additionalItems",
    "additionalProperties",
    "allOf",
    "anyOf",
    "contains",
    "contentSchema",
    "else",
    "if",
    "items",
    "not",
    "oneOf",
    "prefixItems",
    "propertyNames",
    "then",
    "unevaluatedItems",
    "unevaluatedProperties",
];

/// Keywords whose value maps names to subschemas (`dependencies` also maps to arrays of names).
const SUBSCHEMA_MAP_KEYWORDS: &[&str] = &[
    "dependencies",
    "dependentSchemas",
    "patternProperties",
    "properties",
];

/// Keywords holding definitions: not applied themselves, only reached through a `$ref`.
const DEFINITION_KEYWORDS: &[&str] = &["$defs", "definitions"];

/// Keywords that refer to another subschema.
const REFERENCE_KEYWORDS: &[&str] = &["$ref", "$dynamicRef", "$recursiveRef"];

fn refused(reason: impl std::fmt::Display) -> InvalidConfig {
    InvalidConfig(format!("config_schema: {reason}"))
}

/// Checks `value`, the parsed `text` of a schema, against the limits above.
pub fn check(text: &str, value: &Value) -> Result<(), InvalidConfig> {
    check_size(text)?;
    let patterns = count_patterns(value);
    if patterns > MAX_SCHEMA_PATTERNS {
        return Err(refused(format_args!(
            "more than {MAX_SCHEMA_PATTERNS} regular expressions ({patterns})"
        )));
    }
    let mut anchors = HashMap::new();
    let dialect = Dialect::of(value);
    collect_anchors(value, &dialect, true, &mut anchors)?;
    let mut walk = Walk {
        root: value,
        anchors,
        visits: HashMap::new(),
    };
    walk.expand(value, "#".to_string(), 1).map(|_| ())
}

/// `pattern` string values and `patternProperties` names anywhere in `value` (a count that may
/// include look-alikes inside `enum` or `const`: only ever too high).
fn count_patterns(value: &Value) -> usize {
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(key, v)| {
                let own = match (key.as_str(), v) {
                    ("pattern", Value::String(_)) => 1,
                    ("patternProperties", Value::Object(names)) => names.len(),
                    _ => 0,
                };
                own + count_patterns(v)
            })
            .sum(),
        Value::Array(items) => items.iter().map(count_patterns).sum(),
        _ => 0,
    }
}

/// The size limit alone, checked before the text is parsed at all.
pub fn check_size(text: &str) -> Result<(), InvalidConfig> {
    if text.len() > MAX_SCHEMA_BYTES {
        return Err(refused(format_args!(
            "larger than {MAX_SCHEMA_BYTES} bytes ({} bytes)",
            text.len()
        )));
    }
    Ok(())
}

/// The subschemas directly under `schema` that apply to the instance (definitions excluded), with
/// the JSON pointer suffix that leads to each.
fn applied_subschemas(schema: &Map<String, Value>) -> Vec<(String, &Value)> {
    let mut found = Vec::new();
    for (keyword, value) in schema {
        let escaped = escape_pointer(keyword);
        if SUBSCHEMA_KEYWORDS.contains(&keyword.as_str()) {
            match value {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        found.push((format!("/{escaped}/{i}"), item));
                    }
                }
                other => found.push((format!("/{escaped}"), other)),
            }
        } else if SUBSCHEMA_MAP_KEYWORDS.contains(&keyword.as_str()) {
            if let Value::Object(entries) = value {
                for (name, item) in entries {
                    if item.is_object() || item.is_boolean() {
                        found.push((format!("/{escaped}/{}", escape_pointer(name)), item));
                    }
                }
            }
        }
    }
    found
}

/// Every subschema under `schema`, definitions included (for anchors and `$id`s).
fn all_subschemas(schema: &Map<String, Value>) -> Vec<&Value> {
    let mut found: Vec<&Value> = applied_subschemas(schema)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    for keyword in DEFINITION_KEYWORDS {
        if let Some(Value::Object(definitions)) = schema.get(*keyword) {
            found.extend(definitions.values());
        }
    }
    found
}

/// The draft a schema declares at its top (`$schema`), as far as resolving references goes.
struct Dialect<'a> {
    top: Option<&'a str>,
    /// Draft 4 (or 3): a subschema's `id` starts a resource of its own, against which the
    /// references below it resolve.
    legacy_ids: bool,
}

impl<'a> Dialect<'a> {
    fn of(root: &'a Value) -> Self {
        let top = root.get("$schema").and_then(Value::as_str);
        Dialect {
            top,
            legacy_ids: top.is_some_and(names_draft_4),
        }
    }
}

/// Whether a `$schema` value names draft 4 (or 3), whose identifier keyword is `id`.
fn names_draft_4(uri: &str) -> bool {
    let uri = uri.trim_end_matches('#');
    let uri = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .unwrap_or(uri);
    matches!(
        uri,
        "json-schema.org/draft-04/schema" | "json-schema.org/draft-03/schema"
    )
}

/// Whether `schema` or a subschema under it holds a reference.
fn has_reference(schema: &Value) -> bool {
    let Value::Object(map) = schema else {
        return false;
    };
    ["$ref", "$dynamicRef", "$recursiveRef"]
        .iter()
        .any(|k| map.contains_key(*k))
        || all_subschemas(map).into_iter().any(has_reference)
}

/// Records `$anchor` and `$dynamicAnchor` names; refuses what below the top would start a
/// resource of its own, whose references resolve against it rather than against the root: a
/// `$id`; under draft 4, an `id` with references below it (an `id` the references do not depend
/// on, as tools of that time put on every object, is harmless); and a `$schema` naming another
/// draft than the top's (it could make a subschema draft 4).
fn collect_anchors<'a>(
    schema: &'a Value,
    dialect: &Dialect<'_>,
    top: bool,
    anchors: &mut HashMap<&'a str, &'a Value>,
) -> Result<(), InvalidConfig> {
    let Value::Object(map) = schema else {
        return Ok(());
    };
    if !top {
        if map.contains_key("$id") {
            return Err(refused("$id is only supported at the top level"));
        }
        let legacy_id = map.get("id").is_some_and(Value::is_string);
        if dialect.legacy_ids && legacy_id && has_reference(schema) {
            return Err(refused(
                "a draft 4 id with references below it is only supported at the top level",
            ));
        }
        if let Some(declared) = map.get("$schema") {
            if declared.as_str() != dialect.top {
                return Err(refused(
                    "a $schema below the top level must name the same draft as the top",
                ));
            }
        }
    }
    for keyword in ["$anchor", "$dynamicAnchor"] {
        if let Some(Value::String(name)) = map.get(keyword) {
            anchors.insert(name.as_str(), schema);
        }
    }
    for child in all_subschemas(map) {
        collect_anchors(child, dialect, false, anchors)?;
    }
    Ok(())
}

/// What is known about a subschema's expansion.
#[derive(Clone, Copy)]
enum Visit {
    /// Being expanded: reaching it again is a `$ref` cycle.
    InProgress,
    /// Its expanded size and how many levels it spans.
    Done { size: u64, height: usize },
}

struct Walk<'a> {
    root: &'a Value,
    anchors: HashMap<&'a str, &'a Value>,
    /// By address: every subschema is expanded once, however many `$ref`s lead to it.
    visits: HashMap<*const Value, Visit>,
}

impl<'a> Walk<'a> {
    /// The expanded size and height of `schema` (at JSON pointer `at`, `depth` levels down).
    fn expand(
        &mut self,
        schema: &'a Value,
        at: String,
        depth: usize,
    ) -> Result<(u64, usize), InvalidConfig> {
        let key = schema as *const Value;
        match self.visits.get(&key) {
            Some(Visit::InProgress) => {
                return Err(refused(format_args!(
                    "$ref cycle at {at}; recursive schemas are not supported"
                )))
            }
            Some(Visit::Done { size, height }) => {
                let (size, height) = (*size, *height);
                self.check_depth(depth + height - 1, &at)?;
                return Ok((size, height));
            }
            None => {}
        }
        self.check_depth(depth, &at)?;
        let Value::Object(map) = schema else {
            self.visits.insert(key, Visit::Done { size: 1, height: 1 });
            return Ok((1, 1));
        };
        self.visits.insert(key, Visit::InProgress);
        let mut size: u64 = 1;
        let mut height = 1;
        let mut add = |(s, h): (u64, usize)| -> Result<(), InvalidConfig> {
            size = size.saturating_add(s);
            height = height.max(h + 1);
            if size > MAX_SCHEMA_EXPANSION {
                return Err(refused(format_args!(
                    "$ref expansion exceeds {MAX_SCHEMA_EXPANSION} subschemas (the schema with \
                     every $ref replaced by its target)"
                )));
            }
            Ok(())
        };
        for (suffix, child) in applied_subschemas(map) {
            add(self.expand(child, format!("{at}{suffix}"), depth + 1)?)?;
        }
        for keyword in REFERENCE_KEYWORDS {
            if let Some(reference) = map.get(*keyword) {
                // Locations are paths in the expanded schema: through the reference.
                let target = self.resolve(keyword, reference)?;
                add(self.expand(target, format!("{at}/{keyword}"), depth + 1)?)?;
            }
        }
        self.visits.insert(key, Visit::Done { size, height });
        Ok((size, height))
    }

    fn check_depth(&self, depth: usize, at: &str) -> Result<(), InvalidConfig> {
        if depth > MAX_SCHEMA_DEPTH {
            return Err(refused(format_args!(
                "nested deeper than {MAX_SCHEMA_DEPTH} subschemas (counting each $ref as a level) \
                 at {at}"
            )));
        }
        Ok(())
    }

    /// The subschema a reference names.
    fn resolve(&self, keyword: &str, reference: &Value) -> Result<&'a Value, InvalidConfig> {
        let Value::String(text) = reference else {
            return Err(refused(format_args!("{keyword} must be a string")));
        };
        let shown = || text.chars().take(100).collect::<String>();
        let Some(fragment) = text.strip_prefix('#') else {
            return Err(refused(format_args!(
                "{keyword} {:?} is not local; only references within the schema (starting with #) \
                 are supported",
                shown()
            )));
        };
        let fragment = percent_decode(fragment)
            .ok_or_else(|| refused(format_args!("{keyword} {:?} is not valid", shown())))?;
        let target = if fragment.is_empty() || fragment.starts_with('/') {
            self.root.pointer(&fragment)
        } else {
            self.anchors.get(fragment.as_str()).copied()
        };
        target.ok_or_else(|| refused(format_args!("{keyword} {:?} does not resolve", shown())))
    }
}

/// A JSON pointer token for `name` (`~` → `~0`, `/` → `~1`).
fn escape_pointer(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// Decodes `%XX` escapes of a URI fragment; `None` when they do not make UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn checked(schema: Value) -> Result<(), String> {
        check(&schema.to_string(), &schema).map_err(|e| e.0)
    }

    /// `depth` levels of definitions, each an `allOf` of `fan` references to the next.
    fn fan_out(depth: usize, fan: usize) -> Value {
        let mut defs = Map::new();
        for level in 0..depth {
            let next = format!("#/$defs/l{}", level + 1);
            let refs: Vec<Value> = (0..fan).map(|_| json!({ "$ref": next })).collect();
            defs.insert(format!("l{level}"), json!({ "allOf": refs }));
        }
        defs.insert(format!("l{depth}"), json!({"type": "object"}));
        json!({"$defs": defs, "$ref": "#/$defs/l0"})
    }

    #[test]
    fn a_realistic_device_config_schema_is_far_within_the_limits() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://example.com/sensor-config",
            "type": "object",
            "required": ["deviceName"],
            "$defs": {
                "interval": {"type": "integer", "minimum": 1, "maximum": 86400},
                "topic": {"type": "string", "pattern": "^[a-z/]+$"}
            },
            "properties": {
                "deviceName": {"type": "string", "maxLength": 64},
                "enableOTA": {"type": "boolean"},
                "report": {"$ref": "#/$defs/interval"},
                "poll": {"$ref": "#/$defs/interval"},
                "topics": {"type": "array", "items": {"$ref": "#/$defs/topic"}},
                "wifi": {
                    "type": "object",
                    "properties": {"ssid": {"type": "string"}, "retries": {"$ref": "#/$defs/interval"}},
                    "additionalProperties": false
                }
            },
            "if": {"properties": {"enableOTA": {"const": true}}},
            "then": {"required": ["poll"]}
        });
        assert_eq!(checked(schema), Ok(()));
        assert_eq!(checked(json!(true)), Ok(()));
        assert_eq!(checked(fan_out(3, 10)), Ok(()), "1111 subschemas expanded");
    }

    #[test]
    fn fanned_out_references_are_refused_by_their_expansion_not_their_text() {
        for depth in [5, 9, 14] {
            let err = checked(fan_out(depth, 10)).unwrap_err();
            assert!(
                err.starts_with("config_schema: $ref expansion exceeds 10000 subschemas"),
                "{depth}: {err}"
            );
        }
        // The count is exact for a tree: 1 + 2 + 4 + … with the references counted.
        assert_eq!(checked(fan_out(11, 2)), Ok(()));
        assert!(checked(fan_out(13, 2)).is_err());
    }

    #[test]
    fn size_depth_cycles_and_foreign_references_are_refused() {
        let big = json!({"description": "x".repeat(MAX_SCHEMA_BYTES)});
        assert!(checked(big)
            .unwrap_err()
            .contains("larger than 65536 bytes"));

        let nested = |levels: usize| {
            (1..levels).fold(
                json!({"type": "string"}),
                |inner, _| json!({"properties": {"x": inner}}),
            )
        };
        assert_eq!(checked(nested(MAX_SCHEMA_DEPTH)), Ok(()));
        let err = checked(nested(MAX_SCHEMA_DEPTH + 1)).unwrap_err();
        assert!(err.contains("nested deeper than 32"), "{err}");
        // References count as a level, also through a target expanded before at a shallower
        // depth (`a` reaches `deep` at level 3, `b.c` at level 4).
        let chain = json!({
            "$defs": {"deep": nested(MAX_SCHEMA_DEPTH - 2)},
            "properties": {"a": {"$ref": "#/$defs/deep"}, "b": {"properties": {"c": {"$ref": "#/$defs/deep"}}}}
        });
        let err = checked(chain).unwrap_err();
        assert!(
            err.contains("nested deeper") && err.contains("#/properties/b"),
            "{err}"
        );

        for cycle in [
            json!({"$ref": "#"}),
            json!({"properties": {"child": {"$ref": "#"}}}),
            json!({"$defs": {"a": {"allOf": [{"$ref": "#/$defs/b"}]}, "b": {"anyOf": [{"$ref": "#/$defs/a"}]}},
                   "$ref": "#/$defs/a"}),
            json!({"$defs": {"node": {"$anchor": "node", "items": {"$ref": "#node"}}}, "$ref": "#node"}),
        ] {
            let err = checked(cycle.clone()).unwrap_err();
            assert!(err.contains("$ref cycle"), "{cycle}: {err}");
        }

        let err = checked(json!({"$ref": "https://example.com/s.json"})).unwrap_err();
        assert!(err.contains("is not local"), "{err}");
        let err = checked(json!({"$ref": "#/$defs/none"})).unwrap_err();
        assert!(err.contains("does not resolve"), "{err}");
        let err = checked(json!({"$ref": 5})).unwrap_err();
        assert!(err.contains("must be a string"), "{err}");
        let err = checked(json!({"properties": {"a": {"$id": "https://e.com/a"}}})).unwrap_err();
        assert!(
            err.contains("$id is only supported at the top level"),
            "{err}"
        );
        // Draft 4's `id` starts a resource too: the validator would resolve the inner `$ref`s
        // against the inner definitions (a cycle) while a walk from the root sees the decoy.
        let inner = json!({
            "id": "http://example.com/inner",
            "definitions": {"n": {"items": {"allOf": [{"$ref": "#/definitions/n"}, {"$ref": "#/definitions/n"}]}}},
            "items": {"$ref": "#/definitions/n"}
        });
        let draft4 = json!({
            "$schema": "http://json-schema.org/draft-04/schema#",
            "definitions": {"n": {}},
            "allOf": [inner.clone()]
        });
        let err = checked(draft4).unwrap_err();
        assert!(
            err.contains("a draft 4 id with references below it"),
            "{err}"
        );
        // A subschema cannot switch itself to draft 4 either.
        let switched = json!({"allOf": [{"$schema": "http://json-schema.org/draft-04/schema#"}]});
        let err = checked(switched).unwrap_err();
        assert!(err.contains("must name the same draft as the top"), "{err}");
        // Harmless: an id no reference depends on (tools of draft 4's time put one on every
        // object), an `id` under a later draft (an annotation there), a property named `id`, and
        // a nested `$schema` naming the top's draft.
        let generated = json!({
            "$schema": "http://json-schema.org/draft-04/schema#",
            "id": "urn:jsonschema:com:example:Config",
            "properties": {
                "wifi": {"id": "urn:jsonschema:com:example:Wifi", "type": "object",
                         "properties": {"id": {"type": "string"}}}
            }
        });
        assert_eq!(checked(generated), Ok(()));
        let later = json!({"allOf": [inner.clone()], "$defs": {}});
        assert!(checked(later).is_err_and(|e| e.contains("does not resolve")));
        let annotated = json!({"properties": {"a": {"id": "x", "type": "string"}}});
        assert_eq!(checked(annotated), Ok(()));
        let same = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$defs": {"a": {"$schema": "https://json-schema.org/draft/2020-12/schema"}}
        });
        assert_eq!(checked(same), Ok(()));
        // At the top, both are what they always were.
        let top = json!({"$schema": "http://json-schema.org/draft-04/schema#", "id": "http://e.com/s", "type": "object"});
        assert_eq!(checked(top), Ok(()));
    }

    #[test]
    fn references_resolve_by_pointer_with_escapes_and_by_anchor() {
        let schema = json!({
            "$defs": {"a/b": {"type": "string"}, "c~d": {"type": "integer"}, "e f": {"$anchor": "ef"}},
            "properties": {
                "x": {"$ref": "#/$defs/a~1b"},
                "y": {"$ref": "#/$defs/c~0d"},
                "z": {"$ref": "#/$defs/e%20f"},
                "w": {"$ref": "#ef"},
                "v": {"$dynamicRef": "#ef"},
                "root": {"$recursiveRef": "#/$defs/a~1b"}
            }
        });
        assert_eq!(checked(schema), Ok(()));
        // Property names are names, not keywords: one called `$ref` or `$id` is fine.
        let schema =
            json!({"properties": {"$ref": {"type": "string"}, "$id": {"type": "integer"}}});
        assert_eq!(checked(schema), Ok(()));
        // Data is not followed: a `$ref` inside `const` or `default` is a value.
        let schema = json!({"const": {"$ref": "#/nowhere"}, "default": {"$ref": 5}});
        assert_eq!(checked(schema), Ok(()));
    }
}
