//! The Open Inference Protocol over gRPC: our own client (generated from the same service
//! definition) for the checks, then a client written by others (`tritonclient[grpc]` from
//! PyPI) against the shipped model on real photos.
use catsdogs_server::config::GrpcListen;
use catsdogs_server::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use catsdogs_server::grpc::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use catsdogs_server::grpc::proto::{
    InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ServerLiveRequest,
    ServerReadyRequest,
};
use image::ImageFormat;
use tonic::Code;
use tonic::transport::Channel;

use catsdogs_server::api::predict::PredictResponse;

use crate::helpers::{TOKEN, TestApp, image_bytes, ok_json};

/// The REST API's answer for the same file.
async fn rest_answer(app: &TestApp, bytes: Vec<u8>) -> PredictResponse {
    ok_json(app.post_predict("photo", bytes, "application/octet-stream").await).await
}

/// An app with gRPC on an ephemeral loopback port.
async fn app_with_grpc(configure: impl FnOnce(&mut catsdogs_server::ServerConfig)) -> (TestApp, String) {
    let app = TestApp::spawn_with(|cfg| {
        cfg.grpc = GrpcListen::Explicit("127.0.0.1:0".parse().expect("addr"));
        configure(cfg);
    })
    .await;
    let addr = app.grpc.clone().expect("gRPC listening");
    (app, addr)
}

async fn client(addr: &str) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// `message` with the bearer token in its metadata.
fn authed<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().expect("metadata"));
    r
}

/// Encoded files as one raw `BYTES` input (4-byte little-endian length before each).
fn raw_bytes_request(files: &[Vec<u8>]) -> ModelInferRequest {
    let mut raw = Vec::new();
    for f in files {
        raw.extend_from_slice(&(f.len() as u32).to_le_bytes());
        raw.extend_from_slice(f);
    }
    ModelInferRequest {
        model_name: "catsdogs".into(),
        id: "req-1".into(),
        inputs: vec![InferInputTensor {
            name: "image".into(),
            datatype: "BYTES".into(),
            shape: vec![files.len() as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![raw],
        ..Default::default()
    }
}

fn labels_of(resp: &ModelInferResponse) -> Vec<String> {
    let i = resp.outputs.iter().position(|o| o.name == "label").expect("label output");
    if let Some(raw) = resp.raw_output_contents.get(i) {
        let (mut rest, mut out) = (&raw[..], Vec::new());
        while rest.len() >= 4 {
            let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            out.push(String::from_utf8(rest[4..4 + n].to_vec()).expect("utf-8"));
            rest = &rest[4 + n..];
        }
        return out;
    }
    let contents = resp.outputs[i].contents.as_ref().expect("contents");
    contents.bytes_contents.iter().map(|b| String::from_utf8(b.clone()).expect("utf-8")).collect()
}

fn p_dogs_of(resp: &ModelInferResponse) -> Vec<f32> {
    let i = resp.outputs.iter().position(|o| o.name == "p_dog").expect("p_dog output");
    match resp.raw_output_contents.get(i) {
        Some(raw) => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        None => resp.outputs[i].contents.as_ref().expect("contents").fp32_contents.clone(),
    }
}

pub async fn grpc_health_is_public_and_everything_else_needs_the_token() {
    let (app, addr) = app_with_grpc(|_| {}).await;
    let mut c = client(&addr).await;
    assert!(c.server_live(ServerLiveRequest {}).await.expect("live").into_inner().live);
    assert!(c.server_ready(ServerReadyRequest {}).await.expect("ready").into_inner().ready);
    let meta = ModelMetadataRequest { name: "catsdogs".into(), version: String::new() };
    let refused = c.model_metadata(meta.clone()).await.expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let mut wrong = tonic::Request::new(meta.clone());
    wrong.metadata_mut().insert("authorization", "Bearer not-the-token-at-all".parse().expect("metadata"));
    assert_eq!(c.model_metadata(wrong).await.expect_err("bad token").code(), Code::Unauthenticated);
    let m = c.model_metadata(authed(meta)).await.expect("metadata").into_inner();
    assert_eq!(m.name, "catsdogs");
    assert_eq!(m.versions, vec![app.state.model_version()]);
    let outputs: Vec<_> = m.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(outputs, ["p_dog", "label", "evidence", "crop"], "the shipped graph can explain");
    let unknown = ModelMetadataRequest { name: "resnet".into(), version: String::new() };
    assert_eq!(c.model_metadata(authed(unknown)).await.expect_err("unknown").code(), Code::NotFound);
    let refused = c.model_infer(raw_bytes_request(&[image_bytes(ImageFormat::Png)])).await.expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    app.stop().await;
}

pub async fn grpc_inference_agrees_with_rest_and_stores_rows() {
    let (app, addr) = app_with_grpc(|_| {}).await;
    let mut c = client(&addr).await;
    let files = vec![image_bytes(ImageFormat::Png), image_bytes(ImageFormat::Jpeg)];
    // Raw contents in, raw contents out (what tritonclient does).
    let raw = c.model_infer(authed(raw_bytes_request(&files))).await.expect("infer").into_inner();
    assert_eq!(raw.id, "req-1");
    assert_eq!(raw.model_version, app.state.model_version());
    assert_eq!(raw.raw_output_contents.len(), 2, "raw request, raw answer");
    // Typed contents in, typed contents out, only the requested output.
    let mut typed = raw_bytes_request(&files);
    typed.raw_input_contents.clear();
    typed.inputs[0].contents = Some(InferTensorContents { bytes_contents: files.clone(), ..Default::default() });
    typed.outputs = vec![InferRequestedOutputTensor { name: "p_dog".into(), ..Default::default() }];
    let typed = c.model_infer(authed(typed)).await.expect("infer typed").into_inner();
    assert_eq!(typed.outputs.len(), 1);
    assert!(typed.raw_output_contents.is_empty());
    assert_eq!(p_dogs_of(&typed), p_dogs_of(&raw));
    // The same answers as the REST API gives for the same files.
    for (i, f) in files.iter().enumerate() {
        let rest = rest_answer(&app, f.clone()).await;
        assert_eq!(labels_of(&raw)[i], rest.label.as_str());
        let p = rest.p_dog as f32;
        assert!((p_dogs_of(&raw)[i] - p).abs() < 1e-5, "{} vs {p}", p_dogs_of(&raw)[i]);
    }
    // A non-image is the protocol's invalid argument, and is stored as a failed row.
    let refused = c.model_infer(authed(raw_bytes_request(&[b"not an image".to_vec()]))).await.expect_err("text");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().starts_with("unsupported_media_type"), "{}", refused.message());
    app.state.maintain_store().await;
    // 2 raw + 2 typed + 2 REST + 1 refused.
    assert_eq!(app.state.store.count_rows("predictions").await.expect("count"), 7);
    app.stop().await;
}

/// tonic's default 4 MiB message limit is raised to the REST upload limits.
pub async fn a_file_over_four_mib_goes_through_and_one_over_the_upload_limit_does_not() {
    let (app, addr) = app_with_grpc(|cfg| cfg.max_upload_bytes = 8 << 20).await;
    let img = image::RgbImage::from_fn(1400, 1400, |x, y| {
        let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)).wrapping_mul(2_246_822_519);
        image::Rgb([(v >> 8) as u8, (v >> 16) as u8, (v >> 24) as u8])
    });
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), ImageFormat::Png).expect("png");
    assert!(png.len() > 4 << 20 && png.len() < 8 << 20, "{} bytes", png.len());
    let mut c = client(&addr).await;
    let ok = c.model_infer(authed(raw_bytes_request(std::slice::from_ref(&png)))).await.expect("5 MB file");
    assert_eq!(labels_of(ok.get_ref()).len(), 1);
    let big = vec![0u8; (8 << 20) + 1];
    let refused = c.model_infer(authed(raw_bytes_request(&[big]))).await.expect_err("over the limit");
    assert!(matches!(refused.code(), Code::ResourceExhausted | Code::InvalidArgument), "{refused:?}");
    app.stop().await;
}

/// An address the operator chose that cannot be bound stops the start; the default port
/// held by something else only costs the gRPC service.
pub async fn a_taken_explicit_address_fails_the_start_and_a_taken_default_only_warns() {
    let holder = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let taken = holder.local_addr().expect("addr");
    let mut cfg = catsdogs_server::ServerConfig::new(crate::helpers::model_dir(), std::env::temp_dir());
    cfg.grpc = GrpcListen::Explicit(taken);
    assert!(matches!(catsdogs_server::bind_grpc(&cfg).await, Err(catsdogs_server::StartError::Bind { .. })));
    cfg.grpc = GrpcListen::Default(taken);
    assert!(catsdogs_server::bind_grpc(&cfg).await.expect("a warning, not an error").is_none());
    cfg.grpc = GrpcListen::Off;
    assert!(catsdogs_server::bind_grpc(&cfg).await.expect("off").is_none());
}

/// `tritonclient[grpc]` from PyPI: health, metadata, refusal without token, and the labels
/// the REST API gives, on real photos.
pub async fn tritonclient_grpc_works_against_the_shipped_model() {
    let python = catsdogs_testkit::which("python3", "CATSDOGS_TRITON_PYTHON").expect("CATSDOGS_TRITON_PYTHON");
    let photos = catsdogs_testkit::photos();
    let (app, addr) = app_with_grpc(|cfg| {
        cfg.model_dir = catsdogs_testkit::default_model_dir();
        cfg.max_upload_bytes = 2 * 1024 * 1024;
        cfg.max_batch_files = 8;
    })
    .await;
    let files: Vec<std::path::PathBuf> =
        (1..=4).flat_map(|i| [photos.join(format!("cat/{i}.jpg")), photos.join(format!("dog/{i}.jpg"))]).collect();
    let mut expected = Vec::new();
    for f in &files {
        expected.push(rest_answer(&app, std::fs::read(f).expect("photo")).await.label.as_str().to_string());
    }
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/triton_grpc_client.py");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python)
            .arg(&script)
            .args([addr.as_str(), TOKEN, &expected.join(",")])
            .args(&files)
            .output()
    })
    .await
    .expect("join")
    .expect("run the tritonclient script");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tritonclient gRPC checks failed:\n{text}");
    assert!(text.contains("tritonclient grpc checks passed"), "{text}");
    app.stop().await;
}

/// `explain: true` (a bool parameter) adds `evidence` and `crop`, raw or typed; asking for
/// `evidence` by name is enough.
pub async fn grpc_explain_adds_evidence_and_crop() {
    use catsdogs_server::grpc::proto::InferParameter;
    use catsdogs_server::grpc::proto::infer_parameter::ParameterChoice;
    let (app, addr) = app_with_grpc(|_| {}).await;
    let mut c = client(&addr).await;
    let files = vec![image_bytes(ImageFormat::Png)];
    let mut request = raw_bytes_request(&files);
    request
        .parameters
        .insert("explain".into(), InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(true)) });
    let raw = c.model_infer(authed(request)).await.expect("infer").into_inner();
    let names: Vec<&str> = raw.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["p_dog", "label", "evidence", "crop"]);
    assert_eq!(raw.outputs[2].shape, [1, 16, 16]);
    assert_eq!(raw.outputs[3].shape, [1, 4]);
    assert_eq!(raw.raw_output_contents[2].len(), 256 * 4, "256 little-endian floats");
    let crop: Vec<i32> =
        raw.raw_output_contents[3].chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let (w, h) = image::load_from_memory(&files[0]).expect("png").into_rgb8().dimensions();
    assert_eq!(crop, [0, 0, w as i32, h as i32]);
    let mut typed = raw_bytes_request(&files);
    typed.raw_input_contents.clear();
    typed.inputs[0].contents = Some(InferTensorContents { bytes_contents: files.clone(), ..Default::default() });
    typed.outputs = vec![InferRequestedOutputTensor { name: "evidence".into(), ..Default::default() }];
    let typed = c.model_infer(authed(typed)).await.expect("infer typed").into_inner();
    let evidence = &typed.outputs[0].contents.as_ref().expect("contents").fp32_contents;
    let raw_evidence: Vec<f32> =
        raw.raw_output_contents[2].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert_eq!(evidence, &raw_evidence);
    app.stop().await;
}
