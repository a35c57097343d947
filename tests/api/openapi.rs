//! The OpenAPI document against the routes.

use crate::helpers::*;

#[tokio::test]
async fn every_firmware_route_is_in_the_openapi_document() {
    let Some(app) = spawn_app(Stack::Embedded, "firmware_openapi").await else {
        return;
    };
    let doc = app.openapi().await;
    for (path, method) in [
        ("/api/device-models/{id}/firmware", "post"),
        ("/api/device-models/{id}/firmware", "get"),
        ("/api/device-models/{id}/firmware/versions", "get"),
        ("/api/device-models/{id}/firmware/current", "put"),
        ("/api/device-models/{id}/firmware/{version}", "delete"),
        (
            "/api/device-models/{id}/firmware/{version}/{artifact}",
            "get",
        ),
        ("/api/pipeline/models/{code}/firmware", "post"),
        ("/api/pipeline/models/{code}/firmware-version", "get"),
        ("/api/iot/firmware", "get"),
        ("/api/iot/firmware-version", "get"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} missing");
        assert!(op["security"].is_array(), "{method} {path} states its role");
    }
    assert!(doc["components"]["schemas"]["FirmwareVersionList"].is_object());
    app.stop().await;
}
