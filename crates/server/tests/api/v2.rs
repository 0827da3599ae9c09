//! Open Inference Protocol (KServe v2) REST endpoints: our own checks over HTTP, then a
//! client written by others (`tritonclient[http]` from PyPI) against the shipped model.
use base64::Engine;
use catsdogs_server::api::predict::PredictResponse;
use catsdogs_server::api::v2::{InferResponse, ModelMetadata, OutputTensor, ProtocolError};
use image::ImageFormat;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TOKEN, TestApp, image_bytes, model_dir, ok_json};

/// `POST /v2/models/catsdogs/infer` with a raw body (and the binary extension's header).
async fn infer(app: &TestApp, body: Vec<u8>, header_len: Option<usize>) -> reqwest::Response {
    let mut req = app
        .authed(reqwest::Method::POST, "/v2/models/catsdogs/infer")
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(n) = header_len {
        req = req.header("Inference-Header-Content-Length", n.to_string());
    }
    req.send().await.expect("infer")
}

async fn infer_json(app: &TestApp, body: &Value) -> reqwest::Response {
    infer(app, serde_json::to_vec(body).expect("json"), None).await
}

/// A JSON header followed by the binary data it announces.
async fn infer_binary(app: &TestApp, header: &Value, binary: &[u8]) -> reqwest::Response {
    let header = serde_json::to_vec(header).expect("json");
    let mut body = header.clone();
    body.extend_from_slice(binary);
    infer(app, body, Some(header.len())).await
}

fn output<'a>(resp: &'a InferResponse, name: &str) -> &'a OutputTensor {
    resp.outputs.iter().find(|t| t.name == name).expect("output")
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn files() -> [Vec<u8>; 2] {
    [image_bytes(ImageFormat::Png), image_bytes(ImageFormat::Jpeg)]
}

/// The two files as one BYTES input in JSON (base64).
fn json_bytes_request(files: &[Vec<u8>]) -> Value {
    json!({"id": "req-1", "inputs": [{"name": "image", "shape": [files.len()], "datatype": "BYTES",
        "data": files.iter().map(|f| b64(f)).collect::<Vec<_>>()}]})
}

/// The files with the binary-data extension (length-prefixed elements after the JSON).
async fn infer_binary_bytes(app: &TestApp, files: &[Vec<u8>]) -> reqwest::Response {
    let mut binary = Vec::new();
    for f in files {
        binary.extend_from_slice(&(f.len() as u32).to_le_bytes());
        binary.extend_from_slice(f);
    }
    let header = json!({"inputs": [{"name": "image", "shape": [files.len()], "datatype": "BYTES",
        "parameters": {"binary_data_size": binary.len()}}]});
    infer_binary(app, &header, &binary).await
}

const PIXELS_HW: (usize, usize) = (20, 30);

fn pixels() -> Vec<u8> {
    (0..PIXELS_HW.0 * PIXELS_HW.1 * 3).map(|i| (i * 7 % 251) as u8).collect()
}

async fn infer_uint8_json_pixels(app: &TestApp) -> reqwest::Response {
    let (h, w) = PIXELS_HW;
    infer_json(app, &json!({"inputs": [{"name": "pixels", "shape": [h, w, 3], "datatype": "UINT8", "data": pixels()}]}))
        .await
}

async fn infer_fp32_binary_pixels(app: &TestApp) -> reqwest::Response {
    let (h, w) = PIXELS_HW;
    let floats: Vec<u8> = pixels().iter().flat_map(|&v| (f32::from(v) / 255.0).to_le_bytes()).collect();
    let header = json!({"inputs": [{"name": "pixels", "shape": [1, h, w, 3], "datatype": "FP32",
        "parameters": {"binary_data_size": floats.len()}}]});
    infer_binary(app, &header, &floats).await
}

pub async fn v2_health_is_public() {
    let app = TestApp::spawn().await;
    for path in ["/v2/health/live", "/v2/health/ready"] {
        assert_eq!(app.get_anonymous(path).await.status(), StatusCode::OK, "{path}");
    }
    app.stop().await;
}

pub async fn v2_model_metadata_needs_the_token_and_names_the_cards_version() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get_anonymous("/v2/models/catsdogs").await.status(), StatusCode::UNAUTHORIZED);
    let meta: ModelMetadata = app.get_json("/v2/models/catsdogs").await;
    let card: Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir().join("model.json")).expect("seed-cnn card"))
            .expect("card JSON");
    assert_eq!(Some(meta.versions[0].as_str()), card["version"].as_str());
    app.stop().await;
}

pub async fn an_unknown_v2_model_is_404() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/v2/models/other/ready").await.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

/// BYTES in JSON: base64 files; the response keeps the request id; the same answer as
/// `/api/predict` for the same file.
pub async fn json_bytes_inputs_are_classified_like_api_predict() {
    let app = TestApp::spawn().await;
    let files = files();
    let resp: InferResponse = ok_json(infer_json(&app, &json_bytes_request(&files)).await).await;
    assert_eq!(resp.id.as_deref(), Some("req-1"));
    assert_eq!(resp.model_name, "catsdogs");
    let p_dog = output(&resp, "p_dog");
    assert_eq!(p_dog.shape, [2]);
    let labels = output(&resp, "label").data.as_array().cloned().unwrap_or_default();
    assert_eq!(labels.len(), 2);
    let single: PredictResponse = ok_json(app.post_predict("x.png", files[0].clone(), "image/png").await).await;
    let diff = (single.p_dog - p_dog.data[0].as_f64().unwrap_or(1.0)).abs();
    assert!(diff < 1e-6 * single.p_dog.abs().max(1.0), "{single:?} vs {p_dog:?}");
    app.stop().await;
}

pub async fn binary_bytes_inputs_agree_with_json_inputs() {
    let app = TestApp::spawn().await;
    let files = files();
    let json_resp: InferResponse = ok_json(infer_json(&app, &json_bytes_request(&files)).await).await;
    let resp: InferResponse = ok_json(infer_binary_bytes(&app, &files).await).await;
    assert_eq!(output(&resp, "label").data.as_array().map(Vec::len), Some(2));
    assert_eq!(output(&resp, "p_dog").data, output(&json_resp, "p_dog").data, "binary and JSON inputs agree");
    app.stop().await;
}

/// Pixels: UINT8 in JSON, FP32 in binary; the same image gives the same answer.
pub async fn uint8_json_pixels_and_fp32_binary_pixels_agree() {
    let app = TestApp::spawn().await;
    let a: InferResponse = ok_json(infer_uint8_json_pixels(&app).await).await;
    let b: InferResponse = ok_json(infer_fp32_binary_pixels(&app).await).await;
    let (pa, pb) = (output(&a, "p_dog").data[0].as_f64(), output(&b, "p_dog").data[0].as_f64());
    assert!(pa.zip(pb).is_some_and(|(x, y)| (x - y).abs() < 1e-6 * x.abs().max(1.0)), "{pa:?} vs {pb:?}");
    app.stop().await;
}

/// Checks each request's status and the protocol's error shape.
async fn refused(app: &TestApp, cases: Vec<(Value, StatusCode)>) {
    for (body, status) in cases {
        let r = infer_json(app, &body).await;
        assert_eq!(r.status(), status, "{body}");
        let e: ProtocolError = r.json().await.expect("json");
        assert!(e.error.contains(": "), "protocol error shape: {e:?}");
    }
}

pub async fn malformed_inference_requests_get_the_protocol_error_shape() {
    let app = TestApp::spawn().await;
    let png = image_bytes(ImageFormat::Png);
    let bad = vec![
        (json!({"inputs": []}), StatusCode::BAD_REQUEST),
        (
            json!({"inputs": [{"name": "image", "shape": [1], "datatype": "INT64", "data": [1]}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [b64(&png)]}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["not base64!"]}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(b"text")]}]}),
            StatusCode::BAD_REQUEST,
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
    refused(&app, bad).await;
    app.stop().await;
}

/// Shapes that would ask for huge buffers are refused before anything is allocated.
pub async fn huge_shapes_are_refused_before_anything_is_allocated() {
    let app = TestApp::spawn().await;
    let huge = vec![
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
    refused(&app, huge).await;
    app.stop().await;
}

pub async fn unparseable_json_and_a_header_length_beyond_the_body_are_400() {
    let app = TestApp::spawn().await;
    let r = infer(&app, b"{not json".to_vec(), None).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = infer(&app, b"{}".to_vec(), Some(99)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "header length beyond the body");
    app.stop().await;
}

/// Stored like `/api/predict`: 2 + 2 + 1 + 1 successes, 1 failed image, 1 `/api/predict`.
pub async fn protocol_inferences_are_stored_like_api_predictions() {
    let app = TestApp::spawn().await;
    let files = files();
    assert_eq!(infer_json(&app, &json_bytes_request(&files)).await.status(), StatusCode::OK);
    assert_eq!(infer_binary_bytes(&app, &files).await.status(), StatusCode::OK);
    assert_eq!(infer_uint8_json_pixels(&app).await.status(), StatusCode::OK);
    assert_eq!(infer_fp32_binary_pixels(&app).await.status(), StatusCode::OK);
    let text = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(b"text")]}]});
    assert_eq!(infer_json(&app, &text).await.status(), StatusCode::BAD_REQUEST);
    app.predict("x.png").await;
    app.state.maintain_store().await;
    assert_eq!(app.state.store.count_rows("predictions").await.expect("count"), 8);
    app.stop().await;
}

/// `tritonclient[http]` from PyPI: health, metadata and inference on real photos.
pub async fn tritonclient_works_against_the_shipped_model() {
    let python = catsdogs_testkit::which("python3", "CATSDOGS_TRITON_PYTHON").expect("CATSDOGS_TRITON_PYTHON");
    let photos = catsdogs_testkit::photos();
    let app = TestApp::spawn_with(|cfg| {
        cfg.model_dir = catsdogs_testkit::default_model_dir();
        cfg.max_upload_bytes = 2 * 1024 * 1024;
    })
    .await;
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/triton_client.py");
    let host = app.addr();
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

/// The parameter `explain: true` adds `evidence` [N, 16, 16] (the seed CNN's map, the same
/// numbers `/api/predict` gives) and `crop` [N, 4]; the metadata lists both; a non-bool
/// value is refused.
pub async fn explain_adds_evidence_and_crop_outputs() {
    let app = TestApp::spawn().await;
    let files = files();
    let mut request = json_bytes_request(&files);
    request["parameters"] = json!({"explain": true});
    let resp: InferResponse = ok_json(infer_json(&app, &request).await).await;
    let evidence = output(&resp, "evidence");
    assert_eq!((evidence.datatype.as_str(), &evidence.shape[..]), ("FP32", &[2, 16, 16][..]));
    let crop = output(&resp, "crop");
    assert_eq!((crop.datatype.as_str(), &crop.shape[..]), ("INT32", &[2, 4][..]));
    let (w, h) = image::load_from_memory(&files[0]).expect("png").into_rgb8().dimensions();
    assert_eq!(crop.data.as_array().map(|a| a[..4].to_vec()), Some(vec![json!(0), json!(0), json!(w), json!(h)]));
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(files[0].clone()).file_name("x.png"))
        .text("explain", "true");
    let rest: Value = ok_json(app.post_predict_form(form).await).await;
    let first: Vec<f64> = evidence.data.as_array().expect("data")[..256].iter().filter_map(Value::as_f64).collect();
    let from_rest: Vec<f64> =
        rest["explanation"]["evidence"].as_array().expect("evidence").iter().filter_map(Value::as_f64).collect();
    assert_eq!(first.len(), 256);
    assert!(first.iter().zip(&from_rest).all(|(a, b)| (a - b).abs() < 1e-5), "the protocol and the API agree");
    // Without the parameter: the two usual outputs only.
    let plain: InferResponse = ok_json(infer_json(&app, &json_bytes_request(&files)).await).await;
    assert_eq!(plain.outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["p_dog", "label"]);
    let meta: ModelMetadata = app.get_json("/v2/models/catsdogs").await;
    let names: Vec<&str> = meta.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["p_dog", "label", "evidence", "crop"]);
    request["parameters"] = json!({"explain": "please"});
    let r = infer_json(&app, &request).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    app.stop().await;

    // A graph without a logit map: refused before anything is classified or stored.
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["model.onnx", "model.safetensors"] {
        std::fs::copy(model_dir().join(f), dir.path().join(f)).expect("copy");
    }
    let mut card = catsdogs_model::card::ModelCard::load(&model_dir().join("model.json")).expect("card");
    card.outputs.clear();
    card.save(&dir.path().join("model.json")).expect("save");
    let old = dir.path().to_path_buf();
    let app = TestApp::spawn_with(move |cfg| cfg.model_dir = old).await;
    request["parameters"] = json!({"explain": true});
    let r = infer_json(&app, &request).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap_or_default().contains("explanation_unavailable"));
    app.state.maintain_store().await;
    assert_eq!(app.state.store.count_rows("predictions").await.expect("count"), 0, "nothing stored");
    app.stop().await;
}
