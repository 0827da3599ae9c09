//! `/metrics` (Prometheus text format) moves as expected after known requests, and every
//! response carries a request id. The recorder is process-wide: the counting test runs its
//! app alone in this binary.
use image::ImageFormat;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, image_bytes};

/// The value of one series (`name{labels}`), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

pub async fn prometheus_metrics_need_the_token() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get_anonymous("/metrics").await.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

pub async fn prometheus_counters_move_with_known_requests() {
    let app = TestApp::spawn_alone(|_| {}).await;
    let before = app.scrape().await;
    assert!(before.contains("catsdogs_model_info{"), "model info gauge: {before}");

    let mut labels = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let p = app.predict("x.png").await;
        labels.push(p.label);
        ids.push(p.id);
    }
    let r = app.post_predict("bad.png", b"not an image".to_vec(), "image/png").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    for (id, correct) in [(&ids[0], true), (&ids[1], false)] {
        app.feedback(&json!({"prediction_id": id, "correct": correct})).await;
    }

    let after = app.scrape().await;
    let delta = |series: &str| value(&after, series) - value(&before, series);
    let cats = labels.iter().filter(|l| **l == catsdogs_model::Label::Cat).count() as f64;
    assert_eq!(delta(r#"catsdogs_predictions_total{label="cat"}"#), cats);
    assert_eq!(delta(r#"catsdogs_predictions_total{label="dog"}"#), 3.0 - cats);
    assert_eq!(delta(r#"catsdogs_prediction_errors_total{code="unsupported_media_type"}"#), 1.0);
    assert_eq!(delta(r#"catsdogs_feedback_total{verdict="right"}"#), 1.0);
    assert_eq!(delta(r#"catsdogs_feedback_total{verdict="wrong"}"#), 1.0);
    assert_eq!(
        delta(r#"catsdogs_http_requests_total{route="/api/predict",method="POST",status="200"}"#),
        3.0,
        "{after}"
    );
    assert_eq!(delta(r#"catsdogs_http_requests_total{route="/api/predict",method="POST",status="400"}"#), 1.0);
    for stage in ["queue", "decode", "model", "total"] {
        let series = format!(r#"catsdogs_prediction_duration_seconds_count{{stage="{stage}"}}"#);
        assert!(delta(&series) >= 3.0, "{series} moved by {}", delta(&series));
    }
    assert!(delta("catsdogs_batch_size_count") >= 3.0);
    app.stop().await;
}

pub async fn every_answer_carries_a_request_id() {
    let app = TestApp::spawn().await;
    let r = app.post_predict("x.png", image_bytes(ImageFormat::Png), "image/png").await;
    assert!(r.headers().get("x-request-id").is_some_and(|v| !v.is_empty()), "request id header");
    app.stop().await;
}

pub async fn a_request_id_chosen_by_the_client_is_echoed() {
    let app = TestApp::spawn().await;
    let ids = [app.predict("a.png").await.id, app.predict("b.png").await.id];
    for (id, correct) in [(&ids[0], true), (&ids[1], false)] {
        let r = app
            .authed(reqwest::Method::POST, "/api/feedback")
            .header("x-request-id", "client-chosen-id-42")
            .json(&json!({"prediction_id": id, "correct": correct}))
            .send()
            .await
            .expect("feedback");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some("client-chosen-id-42"));
    }
    app.stop().await;
}

/// An id that is not a short token is replaced, never echoed into logs and headers.
pub async fn a_request_id_that_is_not_a_short_token_is_replaced() {
    let app = TestApp::spawn().await;
    let r = app.client.get(app.url("/api/health")).header("x-request-id", "two words\tand a tab").send().await;
    let r = r.expect("health");
    let id = r.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(!id.is_empty() && !id.contains(' '), "replaced request id: {id:?}");
    app.stop().await;
}
