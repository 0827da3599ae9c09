//! `/metrics` (Prometheus text format) moves as expected after known requests, and every
//! response carries a request id. Alone in its test binary: the recorder is process-wide.
mod support;

use image::ImageFormat;
use reqwest::StatusCode;
use serde_json::json;
use support::{TOKEN, TestApp, client, file_form, image_bytes};

/// The value of one series (`name{labels}`), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(app: &TestApp) -> String {
    let r = client().get(app.url("/metrics")).header("Authorization", format!("Bearer {TOKEN}")).send().await;
    let r = r.expect("scrape");
    assert_eq!(r.status(), StatusCode::OK);
    r.text().await.expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_known_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    let app = TestApp::spawn(&db, dir.path().join("data"), None).await;
    let c = client();
    let auth = format!("Bearer {TOKEN}");

    assert_eq!(c.get(app.url("/metrics")).send().await.expect("scrape").status(), StatusCode::UNAUTHORIZED);
    let before = scrape(&app).await;
    assert!(before.contains("catsdogs_model_info{"), "model info gauge: {before}");

    let mut labels = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = c
            .post(app.url("/api/predict"))
            .header("Authorization", &auth)
            .multipart(file_form("x.png", image_bytes(ImageFormat::Png), "image/png"))
            .send()
            .await
            .expect("predict");
        assert!(r.headers().get("x-request-id").is_some_and(|v| !v.is_empty()), "request id header");
        let j: serde_json::Value = r.json().await.expect("json");
        labels.push(j["label"].as_str().expect("label").to_string());
        ids.push(j["id"].as_str().expect("id").to_string());
    }
    let r = c
        .post(app.url("/api/predict"))
        .header("Authorization", &auth)
        .multipart(file_form("bad.png", b"not an image".to_vec(), "image/png"))
        .send()
        .await
        .expect("predict");
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    for (id, correct) in [(&ids[0], true), (&ids[1], false)] {
        let r = c
            .post(app.url("/api/feedback"))
            .header("Authorization", &auth)
            .header("x-request-id", "client-chosen-id-42")
            .json(&json!({"prediction_id": id, "correct": correct}))
            .send()
            .await
            .expect("feedback");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some("client-chosen-id-42"));
    }

    // An id that is not a short token is replaced, never echoed into logs and headers.
    let r = c.get(app.url("/api/health")).header("x-request-id", "two words\tand a tab").send().await.expect("health");
    let id = r.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(!id.is_empty() && !id.contains(' '), "replaced request id: {id:?}");

    let after = scrape(&app).await;
    let delta = |series: &str| value(&after, series) - value(&before, series);
    let cats = labels.iter().filter(|l| *l == "cat").count() as f64;
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
    assert_eq!(delta(r#"catsdogs_http_requests_total{route="/api/predict",method="POST",status="415"}"#), 1.0);
    for stage in ["queue", "decode", "model", "total"] {
        let series = format!(r#"catsdogs_prediction_duration_seconds_count{{stage="{stage}"}}"#);
        assert!(delta(&series) >= 3.0, "{series} moved by {}", delta(&series));
    }
    assert!(delta("catsdogs_batch_size_count") >= 3.0);
    app.stop().await;
}
