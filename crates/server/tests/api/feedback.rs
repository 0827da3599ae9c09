//! `POST /api/feedback`: keyed by prediction id (a second one replaces the first), the
//! seed's body, every refusal, abusive JSON, and the fuzz target's corpus.
use image::ImageFormat;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Db, TestApp, error_code, image_bytes, on_both_databases, outcome};

on_both_databases!(
    feedback_on_a_prediction_is_saved,
    a_second_feedback_replaces_the_first,
    feedback_on_a_batch_prediction_is_saved,
    feedback_on_an_unknown_prediction_is_404,
    the_seeds_feedback_body_gets_the_seeds_answer,
);

/// A fixed id that no prediction has.
const UNKNOWN_ID: &str = "5d1c3a8e-2f4b-4c6d-9e7f-0a1b2c3d4e5f";

async fn feedback_on_a_prediction_is_saved(db: &Db) {
    let app = TestApp::spawn_on(db).await;
    let p = app.predict("a.png").await;
    let v = app.feedback(&json!({"prediction_id": p.id, "correct": true})).await;
    assert_eq!((v.positive, v.replaced, v.saved_to_db), (true, false, true));
    app.stop().await;
}

async fn a_second_feedback_replaces_the_first(db: &Db) {
    let app = TestApp::spawn_on(db).await;
    let p = app.predict("a.png").await;
    app.feedback(&json!({"prediction_id": p.id, "correct": true})).await;
    let other = if p.p_dog >= 0.5 { "cat" } else { "dog" };
    let v = app.feedback(&json!({"prediction_id": p.id, "label": other, "comment": "it is a"})).await;
    assert_eq!((v.positive, v.replaced), (false, true), "{v:?}");
    app.stop().await;
}

async fn feedback_on_a_batch_prediction_is_saved(db: &Db) {
    let app = TestApp::spawn_on(db).await;
    let b = app.batch(vec![("c.jpg".into(), image_bytes(ImageFormat::Jpeg))]).await;
    let batch_id = &b.results[0].result.as_ref().expect("batch result").id;
    let v = app.feedback(&json!({"prediction_id": batch_id, "correct": true})).await;
    assert!(v.positive);
    app.stop().await;
}

async fn feedback_on_an_unknown_prediction_is_404(db: &Db) {
    let app = TestApp::spawn_on(db).await;
    for id in [UNKNOWN_ID, "not-a-uuid"] {
        let r = app.post_feedback(&json!({"prediction_id": id, "correct": true})).await;
        assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "unknown_prediction", "{id}");
    }
    app.stop().await;
}

pub async fn feedback_without_a_verdict_or_with_two_is_422() {
    let app = TestApp::spawn().await;
    let p = app.predict("a.png").await;
    let r = app.post_feedback(&json!({"prediction_id": p.id})).await;
    assert_eq!(error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await, "invalid_body");
    // "Right" together with the other class's label: two verdicts that disagree.
    let other = if p.p_dog >= 0.5 { "cat" } else { "dog" };
    let r = app.post_feedback(&json!({"prediction_id": p.id, "correct": true, "label": other})).await;
    assert_eq!(error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await, "invalid_body");
    app.stop().await;
}

async fn the_seeds_feedback_body_gets_the_seeds_answer(db: &Db) {
    let app = TestApp::spawn_on(db).await;
    let v = app.feedback(&json!({"feedback": "negative", "resultat_prediction": 0.8765, "input_user": "chat"})).await;
    assert_eq!(v.status, "received");
    assert_eq!(v.feedback.as_deref(), Some("negative"));
    assert_eq!(v.resultat_prediction, Some(0.8765));
    assert_eq!(v.input_user.as_deref(), Some("chat"));
    assert!(v.saved_to_db);
    assert!(v.timestamp > 1.7e9);
    app.stop().await;
}

pub async fn an_unknown_seed_verdict_or_body_is_422() {
    let app = TestApp::spawn().await;
    let r = app.post_feedback(&json!({"feedback": "maybe", "resultat_prediction": 0.5, "input_user": ""})).await;
    assert_eq!(error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await, "invalid_body");
    let r = app.post_feedback(&json!({"hello": 1})).await;
    assert_eq!(error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await, "invalid_body");
    app.stop().await;
}

pub async fn malformed_feedback_json_is_400() {
    let app = TestApp::spawn().await;
    let r = app.post_feedback_raw("application/json", b"{not json".to_vec()).await;
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "invalid_json");
    app.stop().await;
}

pub async fn feedback_as_text_plain_is_415() {
    let app = TestApp::spawn().await;
    let r = app.post_feedback_raw("text/plain", b"{}".to_vec()).await;
    assert_eq!(error_code(r, StatusCode::UNSUPPORTED_MEDIA_TYPE).await, "unsupported_content_type");
    app.stop().await;
}

/// Wrong types, huge numbers, unknown fields, SQL-looking strings: each refused with its
/// status and an error code; valid feedback still works and nothing was dropped or injected.
pub async fn abusive_feedback_values_are_refused_and_inject_nothing() {
    let app = TestApp::spawn().await;
    let id = app.predict("ok.png").await.id;
    let cases = [
        (json!({"prediction_id": id, "correct": "yes"}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"prediction_id": id, "correct": 1e308}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"prediction_id": 12345678901234567890u64, "correct": true}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"prediction_id": id, "correct": true, "admin": true}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"prediction_id": "00000000-0000-0000-0000-000000000000", "correct": true}), StatusCode::NOT_FOUND),
        (json!({"prediction_id": "' OR 1=1; --", "correct": true}), StatusCode::NOT_FOUND),
        (json!({"feedback": "positive", "resultat_prediction": 1e308}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"feedback": ["positive"]}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"prediction_id": id, "label": "cat'); DELETE FROM feedback; --"}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!([1, 2, 3]), StatusCode::UNPROCESSABLE_ENTITY),
    ];
    for (body, status) in cases {
        let (got, code) = outcome(app.post_feedback(&body).await).await;
        assert_eq!(got, status, "{body}");
        assert!(code.is_some());
    }
    let r = app.post_feedback(&json!({"prediction_id": id, "correct": true})).await;
    assert_eq!(r.status(), StatusCode::OK, "valid feedback still works");
    assert_eq!(app.state.store.count_rows("feedback").await.expect("count"), 1);
    assert_eq!(app.state.store.count_rows("predictions").await.expect("count"), 1, "nothing was dropped or injected");
    app.stop().await;
}

pub async fn unreadable_feedback_bodies_are_400() {
    let app = TestApp::spawn().await;
    for raw in [&b"{\"prediction_id\": "[..], b"\xff\xfe{}", b""] {
        let r = app.post_feedback_raw("application/json", raw.to_vec()).await;
        assert_eq!(outcome(r).await.0, StatusCode::BAD_REQUEST);
    }
    app.stop().await;
}

/// The feedback fuzz target's seed corpus and regressions (`fuzz/`), replayed through the
/// same parser: accepted, or refused with a 4xx and an error code.
pub fn feedback_fuzz_inputs_are_accepted_or_refused_with_a_4xx() {
    use catsdogs_server::api::feedback::parse_feedback;
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut seen = 0;
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join("feedback_json")) else { continue };
        for path in entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_none_or(|x| x != "md")) {
            let bytes = std::fs::read(&path).expect("read fuzz input");
            for content_type in [None, Some("application/json"), Some("text/plain")] {
                if let Err(e) = parse_feedback(content_type, &bytes) {
                    assert!(e.status.is_client_error() && !e.code.is_empty(), "{}: {}", path.display(), e.status);
                }
            }
            seen += 1;
        }
    }
    assert!(seen >= 5, "feedback seed corpus missing ({seen} files)");
}
