//! Expensive config schemas: a schema whose `$ref`s fan out (or that is too large, too deep,
//! recursive or refers outside itself) is refused when a model's schema is set.

use serde_json::{json, Value};

use crate::coredumps::count;
use crate::fleet::{create_model, device_of};
use crate::helpers::*;

/// `depth` levels of definitions, each an `allOf` of `fan` references to the next: small text,
/// `fan^depth` subschemas once the references are followed.
fn fan_out_schema(depth: usize, fan: usize) -> String {
    let mut defs = serde_json::Map::new();
    for level in 0..depth {
        let next = format!("#/$defs/l{}", level + 1);
        let refs: Vec<Value> = (0..fan).map(|_| json!({ "$ref": next })).collect();
        defs.insert(format!("l{level}"), json!({ "allOf": refs }));
    }
    defs.insert(format!("l{depth}"), json!({"type": "object"}));
    json!({"$defs": defs, "$ref": "#/$defs/l0"}).to_string()
}

/// The start of an answer, for assertion messages (a created device repeats its whole config).
fn brief(body: &Value) -> String {
    body.to_string().chars().take(300).collect()
}

fn assert_refused_with(status: u16, body: &Value, needle: &str) {
    assert_eq!(status, 400, "{}", brief(body));
    assert_eq!(body["code"], "VALIDATION_FAILED", "{}", brief(body));
    let error = body["error"].as_str().unwrap();
    assert!(error.contains(needle), "{needle:?} not in {error:?}");
}

#[tokio::test]
async fn schemas_beyond_the_limits_are_refused_when_a_model_is_created_or_updated() {
    for_each_stack("schema_limits_at_set_time", &[], async |app| {
        let nested = (0..40).fold(
            json!({"type": "string"}),
            |inner, _| json!({"type": "object", "properties": {"x": inner}}),
        );
        let refused = [
            (
                fan_out_schema(5, 10),
                "config_schema: $ref expansion exceeds 10000",
            ),
            (
                fan_out_schema(14, 10),
                "config_schema: $ref expansion exceeds 10000",
            ),
            (
                json!({"description": "x".repeat(70_000)}).to_string(),
                "config_schema: larger than 65536 bytes",
            ),
            (nested.to_string(), "config_schema: nested deeper than 32"),
            (
                json!({"$defs": {"node": {"properties": {"child": {"$ref": "#/$defs/node"}}}},
                       "$ref": "#/$defs/node"})
                .to_string(),
                "config_schema: $ref cycle",
            ),
            (
                json!({"$ref": "https://example.com/schema.json"}).to_string(),
                "config_schema: $ref \"https://example.com/schema.json\" is not local",
            ),
            (
                json!({"$ref": "#/$defs/missing"}).to_string(),
                "config_schema: $ref \"#/$defs/missing\" does not resolve",
            ),
        ];
        for (schema, needle) in &refused {
            let (status, body) = app.create_model("sensor", "Sensor", Some(schema)).await;
            assert_refused_with(status, &body, needle);
        }
        assert_eq!(count(app, "device_models").await, 0);

        // What real schemas look like passes: shared definitions referenced from many places.
        let fine = fan_out_schema(3, 10);
        let id = create_model(app, "sensor", Some(&fine)).await;
        let device = device_of(app, id).await;
        let (status, body) = app
            .update_device(device.id, json!({"config": "{\"a\": 1}"}))
            .await;
        assert_eq!(status, 200, "{body}");

        let (status, body) = app
            .update_model(id, json!({"config_schema": fan_out_schema(6, 10)}))
            .await;
        assert_refused_with(status, &body, "$ref expansion exceeds");
        assert_eq!(app.get_model(id).await.1["config_schema"], fine.as_str());
    })
    .await;
}
