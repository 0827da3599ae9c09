//! Opt-in image retention: nothing is kept without consent; a consented image is one
//! content-addressed file outside the database, becomes a training example once it has
//! feedback, and goes with its prediction (erasure, then the retention purge).
use catsdogs_server::api::predict::PredictResponse;
use catsdogs_server::api::predictions::ErasureReport;
use chrono::{Duration, Utc};
use image::ImageFormat;
use serde_json::json;

use crate::gdpr::all_bytes_under;
use crate::helpers::{TestApp, file_form, image_bytes, ok_json};

pub(crate) async fn predict_with_consent(app: &TestApp, bytes: Vec<u8>, consent: Option<&str>) -> PredictResponse {
    let mut form = file_form("pet.png", bytes, "image/png");
    if let Some(c) = consent {
        form = form.text("consent", c.to_string());
    }
    ok_json(app.post_predict_form(form).await).await
}

/// Two consented predictions of the same PNG: the PNG, their ids, and the kept file.
async fn two_consented_predictions(app: &TestApp) -> (Vec<u8>, String, String, std::path::PathBuf) {
    let png = image_bytes(ImageFormat::Png);
    let first = predict_with_consent(app, png.clone(), Some("true")).await;
    assert!(first.image_kept);
    let second = predict_with_consent(app, png.clone(), Some("on")).await;
    app.state.outbox.flush(&app.state.store).await.expect("flush");
    let row = app.state.store.get_prediction(&first.id).await.expect("get").expect("row");
    let image_ref = row.image_ref.expect("image_ref stored");
    let path = app.state.images.path(&image_ref).expect("valid ref");
    (png, first.id, second.id, path)
}

async fn erase(app: &TestApp, id: &str) -> ErasureReport {
    app.get_json_with(reqwest::Method::DELETE, &format!("/api/predictions/{id}")).await
}

pub async fn without_consent_no_image_is_kept() {
    let app = TestApp::spawn().await;
    let images = &app.state.images;
    for consent in [None, Some("false"), Some("no")] {
        let p = predict_with_consent(&app, image_bytes(ImageFormat::Png), consent).await;
        assert!(!p.image_kept);
    }
    assert_eq!(images.count(), 0, "no consent, no file");
    assert!(!images.dir().exists() || all_bytes_under(images.dir()).is_empty());
    app.stop().await;
}

pub async fn a_consented_image_is_one_content_addressed_file_outside_the_database() {
    let app = TestApp::spawn().await;
    let (png, _, _, path) = two_consented_predictions(&app).await;
    assert_eq!(app.state.images.count(), 1, "the same photo twice is one file");
    assert_eq!(std::fs::read(&path).expect("read"), png, "the file holds the upload, byte for byte");
    let mid = &png[png.len() / 2..png.len() / 2 + 32];
    for (name, bytes) in all_bytes_under(&app.data_dir).iter().filter(|(p, _)| p.contains("catsdogs.db")) {
        assert!(!bytes.windows(mid.len()).any(|w| w == mid), "image bytes in {name}");
    }
    app.stop().await;
}

pub async fn feedback_turns_a_kept_image_into_a_training_example() {
    let app = TestApp::spawn().await;
    let (_, id1, _, _) = two_consented_predictions(&app).await;
    let image_ref = app.state.store.get_prediction(&id1).await.expect("get").expect("row").image_ref.expect("ref");
    app.feedback(&json!({"prediction_id": id1, "label": "dog"})).await;
    let examples = app.state.store.labelled_images().await.expect("labelled");
    assert_eq!(examples.len(), 1);
    assert_eq!((examples[0].label.as_str(), examples[0].image_ref.as_str()), ("dog", image_ref.as_str()));
    app.stop().await;
}

pub async fn a_kept_image_goes_with_the_last_prediction_holding_it() {
    let app = TestApp::spawn().await;
    let (_, id1, id2, path) = two_consented_predictions(&app).await;
    assert_eq!(erase(&app, &id1).await.images, 0);
    assert!(path.is_file());
    assert_eq!(erase(&app, &id2).await.images, 1);
    assert!(!path.exists());
    assert_eq!(app.state.images.count(), 0);
    app.stop().await;
}

/// The purge removes images whose prediction it deleted (past the grace period).
pub async fn the_purge_removes_the_images_of_the_predictions_it_deletes() {
    let app = TestApp::spawn().await;
    let old = predict_with_consent(&app, image_bytes(ImageFormat::Jpeg), Some("1")).await;
    app.state.outbox.flush(&app.state.store).await.expect("flush");
    let old_ref = app.state.store.get_prediction(&old.id).await.expect("get").expect("row");
    let old_path = app.state.images.path(&old_ref.image_ref.expect("ref")).expect("path");
    let f = std::fs::File::options().write(true).open(&old_path).expect("open");
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 3600)).expect("mtime");
    let holdings = app.state.holdings();
    let far = Utc::now() + Duration::days(400);
    let removed = catsdogs_store::retention::purge(holdings, Default::default(), far, "test").await.expect("purge");
    assert_eq!(removed.images, 1, "{removed:?}");
    assert!(removed.rows.predictions >= 1);
    assert!(!old_path.exists());
    app.stop().await;
}
