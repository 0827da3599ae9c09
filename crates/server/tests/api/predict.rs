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

/// `explain=true` adds the class-activation map and where the model's input came from in
/// the upright image; without it the answer is the same as before.
pub async fn explain_adds_the_map_and_the_crop_only_when_asked() {
    let app = TestApp::spawn_with(|cfg| cfg.model_dir = catsdogs_testkit::default_model_dir()).await;
    let photo = image::RgbImage::from_fn(400, 300, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 90]));
    let mut jpeg = Vec::new();
    photo.write_to(&mut std::io::Cursor::new(&mut jpeg), ImageFormat::Jpeg).expect("jpeg");
    let ask = |bytes: Vec<u8>, explain: bool| {
        let part = reqwest::multipart::Part::bytes(bytes).file_name("photo.jpg");
        let form = reqwest::multipart::Form::new().part("file", part);
        if explain { form.text("explain", "true") } else { form }
    };
    let plain: serde_json::Value = ok_json(app.post_predict_form(ask(jpeg.clone(), false)).await).await;
    assert!(plain.get("explanation").is_none(), "{plain}");
    let p: serde_json::Value = ok_json(app.post_predict_form(ask(jpeg.clone(), true)).await).await;
    let e = &p["explanation"];
    assert_eq!(e["grid"], json!([7, 7]), "{p}");
    let evidence: Vec<f64> = e["evidence"].as_array().expect("evidence").iter().filter_map(|v| v.as_f64()).collect();
    assert_eq!(evidence.len(), 49);
    // Signed for the answer: the mean is the logit of the answered class's probability.
    let p_answer = p["p_dog"].as_f64().expect("p_dog").max(p["p_cat"].as_f64().expect("p_cat"));
    let mean = evidence.iter().sum::<f64>() / 49.0;
    assert!((mean - (p_answer / (1.0 - p_answer)).ln()).abs() < 1e-3, "mean {mean}, answer {p_answer}");
    // Short side 300 -> 256, centre 224: a 262.5 px square in the middle of the 400x300 photo.
    assert_eq!(e["crop"], json!({"x": 68.75, "y": 18.75, "width": 262.5, "height": 262.5, "size": 262.5}));
    // The same file marked "rotate 90°": the crop is in the upright (300x400) image.
    let rotated = catsdogs_testkit::with_exif_orientation(&jpeg, 6);
    let r: serde_json::Value = ok_json(app.post_predict_form(ask(rotated, true)).await).await;
    assert_eq!(
        r["explanation"]["crop"],
        json!({"x": 18.75, "y": 68.75, "width": 262.5, "height": 262.5, "size": 262.5})
    );
    // A batch explains each result.
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(jpeg.clone()).file_name("a.jpg"))
        .part("file", reqwest::multipart::Part::bytes(jpeg).file_name("b.jpg"))
        .text("explain", "1");
    let resp = app.authed(reqwest::Method::POST, "/api/predict/batch").multipart(form).send().await.expect("send");
    let b: serde_json::Value = ok_json(resp).await;
    let results = b["results"].as_array().expect("results");
    assert!(results.iter().all(|r| r["result"]["explanation"]["grid"] == json!([7, 7])), "{b}");
    app.stop().await;
}

/// The seed CNN squashes the whole photo: its 16x16 map covers all of it (`size` null).
pub async fn the_seed_cnn_explains_over_the_whole_photo() {
    let app = TestApp::spawn().await;
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(image_bytes(ImageFormat::Png)).file_name("x.png"))
        .text("explain", "yes");
    let p: serde_json::Value = ok_json(app.post_predict_form(form).await).await;
    let e = &p["explanation"];
    assert_eq!(e["grid"], json!([16, 16]), "{p}");
    let (w, h) = image::load_from_memory(&image_bytes(ImageFormat::Png)).expect("png").into_rgb8().dimensions();
    assert_eq!(e["crop"], json!({"x": 0.0, "y": 0.0, "width": f64::from(w), "height": f64::from(h), "size": null}));
    app.stop().await;
}
