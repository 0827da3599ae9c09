//! `POST /api/predict`: the seed's fields and formats plus ours, formats sniffed from the
//! content, the stored row, and one test per refusal.
use catsdogs_server::api::predict::PredictResponse;
use image::ImageFormat;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Db, MAX_UPLOAD, TestApp, error_code, image_bytes, ok_json, on_both_databases, pct};

on_both_databases!(the_stored_row_holds_a_pseudonym_not_the_file_name);

pub async fn predict_answers_with_the_seed_fields_and_ours() {
    let app = TestApp::spawn().await;
    let r = app.post_predict("my cat.png", image_bytes(ImageFormat::Png), "image/png").await;
    assert_eq!(r.status(), StatusCode::OK);
    let p: PredictResponse = r.json().await.expect("json");
    assert!((0.0..=1.0).contains(&p.p_dog));
    assert_eq!(p.probabilities.dog, pct(p.p_dog));
    assert_eq!(p.probabilities.cat, pct(1.0 - p.p_dog));
    assert_eq!(p.prediction, if p.p_dog >= 0.5 { "Dog" } else { "Cat" });
    assert_eq!(p.confidence, pct(p.p_dog.max(1.0 - p.p_dog)));
    assert_eq!(p.filename, "my cat.png");
    assert!(p.latency_ms >= 0.0);
    assert!(!p.model_version.is_empty());
    assert!(uuid::Uuid::parse_str(&p.id).is_ok());
    app.stop().await;
}

async fn the_stored_row_holds_a_pseudonym_not_the_file_name(db: &Db) {
    let app = TestApp::spawn_on(db).await;
    let p = app.predict("my cat.png").await;
    let stored = app.state.store.get_prediction(&p.id).await.expect("query").expect("row stored");
    let file_ref = stored.file_ref.expect("pseudonymised name");
    assert!(file_ref.starts_with("upload-") && !file_ref.contains("cat"), "{file_ref}");
    app.stop().await;
}

pub async fn every_format_is_sniffed_from_its_content_whatever_name_and_type() {
    let app = TestApp::spawn().await;
    for (fmt, name) in [
        (ImageFormat::Jpeg, "x.txt"),
        (ImageFormat::Gif, "y.gif"),
        (ImageFormat::WebP, "z"),
        (ImageFormat::Bmp, "w.bmp"),
    ] {
        let r = app.post_predict(name, image_bytes(fmt), "text/plain").await;
        assert_eq!(r.status(), StatusCode::OK, "{fmt:?}");
        let _: PredictResponse = ok_json(r).await;
    }
    app.stop().await;
}

/// The seed answers 400 to a file that is not an image; the precise code stays in the body.
pub async fn a_text_file_is_refused_with_400_unsupported_media_type() {
    let app = TestApp::spawn().await;
    let r = app.post_predict("notes.txt", b"hello, this is text".to_vec(), "image/png").await;
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "unsupported_media_type");
    app.stop().await;
}

pub async fn a_truncated_image_is_refused_with_422() {
    let app = TestApp::spawn().await;
    let mut corrupt = image_bytes(ImageFormat::Png);
    corrupt.truncate(60);
    let r = app.post_predict("broken.png", corrupt, "image/png").await;
    assert_eq!(error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await, "corrupt_image");
    app.stop().await;
}

pub async fn an_empty_file_is_refused_with_400() {
    let app = TestApp::spawn().await;
    let r = app.post_predict("empty.png", Vec::new(), "image/png").await;
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "empty_file");
    app.stop().await;
}

pub async fn a_file_over_the_size_limit_is_refused_with_413() {
    let app = TestApp::spawn().await;
    let mut big = image_bytes(ImageFormat::Bmp);
    big.resize(MAX_UPLOAD + 1, 0);
    let r = app.post_predict("big.bmp", big, "image/bmp").await;
    assert_eq!(error_code(r, StatusCode::PAYLOAD_TOO_LARGE).await, "payload_too_large");
    app.stop().await;
}

pub async fn a_form_without_a_file_is_refused_with_400() {
    let app = TestApp::spawn().await;
    let r = app.post_predict_form(reqwest::multipart::Form::new().text("other", "x")).await;
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "missing_file");
    app.stop().await;
}

pub async fn a_json_body_is_refused_with_415() {
    let app = TestApp::spawn().await;
    let body = serde_json::to_vec(&json!({"file": "x"})).expect("json");
    let r = app.post_predict_raw("application/json", body).await;
    assert_eq!(error_code(r, StatusCode::UNSUPPORTED_MEDIA_TYPE).await, "unsupported_content_type");
    app.stop().await;
}
