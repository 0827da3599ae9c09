//! Open Inference Protocol (KServe v2) REST endpoints: our own checks over HTTP, then a
//! client written by others (`tritonclient[http]` from PyPI) against the shipped model.
mod support;

use std::path::PathBuf;

use base64::Engine;
use image::ImageFormat;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{TOKEN, TestApp, client, default_model_dir, image_bytes, photos_dir};

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

async fn infer(app: &TestApp, body: Vec<u8>, header_len: Option<usize>) -> reqwest::Response {
    let mut req = client()
        .post(app.url("/v2/models/catsdogs/infer"))
        .header("Authorization", bearer())
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(n) = header_len {
        req = req.header("Inference-Header-Content-Length", n.to_string());
    }
    req.send().await.expect("infer")
}

async fn ok_json(r: reqwest::Response) -> Value {
    let status = r.status();
    let body: Value = r.json().await.expect("json");
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn output<'a>(resp: &'a Value, name: &str) -> &'a Value {
    resp["outputs"].as_array().and_then(|o| o.iter().find(|t| t["name"] == name)).expect("output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_endpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("v2.db").display());
    let app = TestApp::spawn(&db, dir.path().join("data"), None).await;
    let c = client();

    for path in ["/v2/health/live", "/v2/health/ready"] {
        assert_eq!(c.get(app.url(path)).send().await.expect("health").status(), StatusCode::OK, "{path}");
    }
    assert_eq!(c.get(app.url("/v2/models/catsdogs")).send().await.expect("meta").status(), StatusCode::UNAUTHORIZED);
    let meta =
        ok_json(c.get(app.url("/v2/models/catsdogs")).header("Authorization", bearer()).send().await.expect("m")).await;
    let card: Value =
        serde_json::from_str(&std::fs::read_to_string(support::model_dir().join("model.json")).expect("seed-cnn card"))
            .expect("card JSON");
    assert_eq!(meta["versions"][0], card["version"]);
    let r = c.get(app.url("/v2/models/other/ready")).header("Authorization", bearer()).send().await.expect("ready");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // BYTES in JSON: base64 files; the response keeps the request id.
    let b64 = |b: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(b);
    let files = [image_bytes(ImageFormat::Png), image_bytes(ImageFormat::Jpeg)];
    let body = json!({"id": "req-1", "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
        "data": [b64(files[0].clone()), b64(files[1].clone())]}]});
    let resp = ok_json(infer(&app, serde_json::to_vec(&body).expect("json"), None).await).await;
    assert_eq!(resp["id"], "req-1");
    assert_eq!(resp["model_name"], "catsdogs");
    let p_dog = output(&resp, "p_dog");
    assert_eq!(p_dog["shape"], json!([2]));
    let labels = output(&resp, "label")["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(labels.len(), 2);
    // The same answer as /api/predict for the same file.
    let r = c
        .post(app.url("/api/predict"))
        .header("Authorization", bearer())
        .multipart(support::file_form("x.png", files[0].clone(), "image/png"))
        .send()
        .await
        .expect("predict");
    let single = ok_json(r).await;
    let diff = (single["p_dog"].as_f64().unwrap_or(-1.0) - p_dog["data"][0].as_f64().unwrap_or(1.0)).abs();
    assert!(diff < 1e-6, "{single} vs {p_dog}");

    // BYTES with the binary-data extension (length-prefixed elements after the JSON).
    let mut binary = Vec::new();
    for f in &files {
        binary.extend_from_slice(&(f.len() as u32).to_le_bytes());
        binary.extend_from_slice(f);
    }
    let header = serde_json::to_vec(&json!({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
        "parameters": {"binary_data_size": binary.len()}}]}))
    .expect("json");
    let mut body = header.clone();
    body.extend_from_slice(&binary);
    let resp = ok_json(infer(&app, body, Some(header.len())).await).await;
    assert_eq!(output(&resp, "label")["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(output(&resp, "p_dog")["data"], p_dog["data"], "binary and JSON inputs agree");

    // Pixels: UINT8 in JSON, FP32 in binary; the same image gives the same answer.
    let (h, w) = (20usize, 30usize);
    let px: Vec<u8> = (0..h * w * 3).map(|i| (i * 7 % 251) as u8).collect();
    let body = json!({"inputs": [{"name": "pixels", "shape": [h, w, 3], "datatype": "UINT8", "data": px}]});
    let a = ok_json(infer(&app, serde_json::to_vec(&body).expect("json"), None).await).await;
    let floats: Vec<u8> = px.iter().flat_map(|&v| (f32::from(v) / 255.0).to_le_bytes()).collect();
    let header = serde_json::to_vec(&json!({"inputs": [{"name": "pixels", "shape": [1, h, w, 3], "datatype": "FP32",
        "parameters": {"binary_data_size": floats.len()}}]}))
    .expect("json");
    let mut body = header.clone();
    body.extend_from_slice(&floats);
    let b = ok_json(infer(&app, body, Some(header.len())).await).await;
    let (pa, pb) = (output(&a, "p_dog")["data"][0].as_f64(), output(&b, "p_dog")["data"][0].as_f64());
    assert!(pa.zip(pb).is_some_and(|(x, y)| (x - y).abs() < 1e-6), "{pa:?} vs {pb:?}");

    // Errors: JSON error shape, right status.
    let bad = [
        (json!({"inputs": []}), StatusCode::BAD_REQUEST),
        (
            json!({"inputs": [{"name": "image", "shape": [1], "datatype": "INT64", "data": [1]}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [b64(files[0].clone())]}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["not base64!"]}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(b"text".to_vec())]}]}),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            json!({"inputs": [{"name": "pixels", "shape": [2, 2, 4], "datatype": "UINT8", "data": vec![0; 16]}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"inputs": [{"name": "pixels", "shape": [2, 2, 3], "datatype": "UINT8", "data": vec![0; 5]}]}),
            StatusCode::BAD_REQUEST,
        ),
    ];
    // Shapes that would ask for huge buffers are refused before anything is allocated.
    let huge = [
        (
            json!({"inputs": [{"name": "pixels", "shape": [1000, 1000, 1000, 3], "datatype": "UINT8"}]}),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            json!({"inputs": [{"name": "image", "shape": [1_000_000_000_000i64], "datatype": "BYTES", "data": []}]}),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            json!({"inputs": [{"name": "pixels", "shape": [1, 100000, 100000, 3], "datatype": "UINT8"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (body, status) in bad.into_iter().chain(huge) {
        let r = infer(&app, serde_json::to_vec(&body).expect("json"), None).await;
        assert_eq!(r.status(), status, "{body}");
        let e: Value = r.json().await.expect("json");
        assert!(e["error"].as_str().is_some_and(|m| m.contains(": ")), "protocol error shape: {e}");
    }
    let r = infer(&app, b"{not json".to_vec(), None).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = infer(&app, b"{}".to_vec(), Some(99)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "header length beyond the body");

    // Stored like /api/predict: 2 + 2 + 1 + 1 successes, 1 failed image, 1 /api/predict.
    app.state.maintain_store().await;
    assert_eq!(app.state.store.count_rows("predictions").await.expect("count"), 8);
    app.stop().await;
}

/// `tritonclient[http]` from PyPI: health, metadata and inference on real photos.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_against_the_shipped_model() {
    let python = std::env::var_os("CATSDOGS_TRITON_PYTHON").map(PathBuf::from);
    let required = std::env::var("CATSDOGS_REQUIRE_TRITON").as_deref() == Ok("1");
    let (Some(python), Some(photos)) = (python, photos_dir()) else {
        assert!(!required, "tritonclient test required: set CATSDOGS_TRITON_PYTHON and the photo folder");
        eprintln!("SKIPPED: set CATSDOGS_TRITON_PYTHON to a python with tritonclient[http] (and the photos)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("triton.db").display());
    let app = TestApp::spawn_with(&db, dir.path().join("data"), None, |cfg| {
        cfg.model_dir = default_model_dir();
        cfg.max_upload_bytes = 2 * 1024 * 1024;
    })
    .await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/triton_client.py");
    let host = app.base.trim_start_matches("http://").to_string();
    let (cat, dog) = (photos.join("cat/1.jpg"), photos.join("dog/1.jpg"));
    // Blocking child process on the blocking pool: the server keeps its async workers.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python).arg(&script).args([host.as_str(), TOKEN]).arg(&cat).arg(&dog).output()
    })
    .await
    .expect("join")
    .expect("run the tritonclient script");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tritonclient checks failed:\n{text}");
    assert!(text.contains("tritonclient checks passed"), "{text}");
    app.stop().await;
}
