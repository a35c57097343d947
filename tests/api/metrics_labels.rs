//! The request metrics' labels come from fixed sets: whatever methods and paths clients send,
//! `http_requests_total` and `http_request_duration_seconds` grow no new series for them.

use http::Method;

use crate::helpers::*;

/// The `http_requests_total` series (one line each) of a Prometheus text.
fn request_series(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|line| line.starts_with("http_requests_total{"))
        .collect()
}

#[tokio::test]
async fn custom_methods_and_unmatched_paths_leave_the_number_of_series_bounded() {
    let Some(app) = spawn_app(Stack::Embedded, "metric_cardinality").await else {
        return;
    };
    let mut sent = Vec::new();
    for i in 0..150 {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let method = Method::from_bytes(format!("M{}", token.to_uppercase()).as_bytes()).unwrap();
        // Half to a route that exists (405), half to paths that do not (404).
        let path = if i % 2 == 0 {
            "/health/healthz".to_string()
        } else {
            format!("/nothing/{token}")
        };
        let response = app
            .client
            .request(method.clone(), app.url(&path))
            .send()
            .await
            .unwrap();
        assert!(
            [404, 405].contains(&response.status().as_u16()),
            "{method} {path}"
        );
        sent.push(token);
    }
    for _ in 0..50 {
        let token = uuid::Uuid::new_v4().simple().to_string();
        assert_eq!(app.get(&format!("/also/{token}")).await.status(), 404);
        sent.push(token);
    }

    let text = app.metrics().await;
    let series = request_series(&text);
    for token in &sent {
        assert!(
            !text.to_lowercase().contains(token),
            "a request's method or path became a label: {token}"
        );
    }
    for line in &series {
        let method = line
            .split("method=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a method label");
        assert!(
            [
                "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
                "_OTHER"
            ]
            .contains(&method),
            "{line}"
        );
    }
    let other: Vec<_> = series
        .iter()
        .filter(|line| line.contains("method=\"_OTHER\""))
        .collect();
    assert!(
        (1..=4).contains(&other.len()),
        "custom methods share a few series (route x status): {other:#?}"
    );
    app.stop().await;
}
