//! Open Inference Protocol (KServe v2 / Triton) over REST, so KServe, Triton and MLServer
//! clients can call the model: health, server and model metadata, and inference.
//!
//! Inputs (one per request):
//! - `image`, `BYTES`, shape `[N]`: encoded files (JPEG, PNG, ...). In JSON each element is
//!   the file in base64; with the binary-data extension (`Inference-Header-Content-Length`)
//!   the raw bytes follow the JSON header, each element prefixed by its 4-byte
//!   little-endian length, as Triton clients send them.
//! - `pixels`, `UINT8` (0-255) or `FP32` (0-1), shape `[N, H, W, 3]` or `[H, W, 3]`: RGB
//!   pixels, row-major; cropped and resized exactly like decoded files.
//!
//! Outputs: `p_dog` (`FP32`, `[N]`) and `label` (`BYTES`, `[N]`, `cat` or `dog`); with the
//! request parameter `explain: true` also `evidence` (`FP32`, `[N, rows, cols]`, the
//! class-activation map for each answer) and `crop` (`INT32`, `[N, 4]`). Every
//! image is stored as a prediction like `/api/predict` (same limits and storage). Errors
//! keep the API's status codes but use the protocol's shape, `{"error": "<code>: <message>"}`,
//! which protocol clients parse.
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use catsdogs_core::{Classified, ImageInput};
use catsdogs_model::card::GraphOutput;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::api::predict::record;
use crate::error::ApiError;
use crate::state::AppState;
use crate::telemetry::{Stage, StageSpans};
use std::time::Instant;

/// The model's name on the protocol.
pub const MODEL_NAME: &str = "catsdogs";

/// `{"live": true}` / `{"ready": bool}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Error body of the protocol's routes: `{"error": "<code>: <message>"}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProtocolError {
    pub error: String,
}

/// A tensor's name, type and shape (`-1`: any size).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{name}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// `GET /v2`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

/// One input tensor of an inference request. `data` stays raw JSON until its type and
/// size are known, so a huge numeric array never becomes a tree of JSON values.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Map<String, Value>>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub data: Option<Box<serde_json::value::RawValue>>,
}

impl InputTensor {
    /// A tensor described by type and shape whose data travels outside the JSON (binary
    /// extension, gRPC raw contents).
    pub(crate) fn described(name: &str, datatype: &str, shape: &[i64]) -> Self {
        Self { name: name.into(), shape: shape.to_vec(), datatype: datatype.into(), parameters: None, data: None }
    }
}

/// Largest JSON text accepted for numeric pixel data; bigger tensors must use the binary
/// extension (JSON numbers cost ~4 bytes of text and 8 of memory per value).
pub const MAX_JSON_PIXEL_TEXT: usize = 8 * 1024 * 1024;

/// `POST /v2/models/{name}/infer` body (JSON part).
#[derive(Debug, Deserialize, ToSchema)]
pub struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<InputTensor>,
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub outputs: Option<Vec<Value>>,
}

/// One output tensor.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OutputTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    #[schema(value_type = Vec<Object>)]
    pub data: Value,
}

/// Inference response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<OutputTensor>,
}

/// Most bytes of an error body rewritten into the protocol's shape.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Response middleware for the protocol's routes: `{"error": {"code", "message"}}` becomes
/// `{"error": "code: message"}` (same status).
pub async fn protocol_error_shape(resp: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    if resp.status().is_success() {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ERROR_BODY).await else {
        return (parts.status, Json(serde_json::json!({"error": "error body too large"}))).into_response();
    };
    let message = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => match (&v["error"]["code"], &v["error"]["message"]) {
            (Value::String(c), Value::String(m)) => format!("{c}: {m}"),
            // Already in the protocol's shape (e.g. `{"ready": false}`): unchanged.
            _ => return axum::response::Response::from_parts(parts, axum::body::Body::from(bytes)),
        },
        Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
    };
    let mut out = (parts.status, Json(serde_json::json!({ "error": message }))).into_response();
    for name in [axum::http::header::WWW_AUTHENTICATE, axum::http::header::RETRY_AFTER] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_inference_request", message)
}

pub(crate) fn check_model(name: &str) -> Result<(), ApiError> {
    if name == MODEL_NAME {
        Ok(())
    } else {
        Err(ApiError::not_found("unknown_model", format!("no model named {name:?}; this server serves {MODEL_NAME:?}")))
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/v2/health/live", tag = "inference protocol",
    responses((status = 200, description = "Live", body = HealthStatus)))]
pub async fn live() -> Json<HealthStatus> {
    Json(HealthStatus { live: Some(true), ready: None, name: None })
}

/// Readiness: a model is loaded (predictions do not need the database).
#[utoipa::path(get, path = "/v2/health/ready", tag = "inference protocol",
    responses((status = 200, description = "Ready", body = HealthStatus),
              (status = 503, description = "No model loaded", body = HealthStatus)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<HealthStatus>) {
    let ok = state.loaded_model().is_some();
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(HealthStatus { live: None, ready: Some(ok), name: None }))
}

/// Server metadata.
#[utoipa::path(get, path = "/v2", tag = "inference protocol",
    responses((status = 200, description = "Server metadata", body = ServerMetadata),
              (status = 401, description = "Missing or invalid token", body = ProtocolError)),
    security(("bearer" = [])))]
pub async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: MODEL_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: vec!["binary_tensor_data".into()],
    })
}

/// The served model's protocol metadata (REST and gRPC).
pub(crate) fn served_model_metadata(state: &AppState) -> ModelMetadata {
    let t = |name: &str, datatype: &str, shape: &[i64]| TensorMetadata {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
    };
    ModelMetadata {
        name: MODEL_NAME.into(),
        versions: vec![state.model_version()],
        platform: "onnxruntime_onnx".into(),
        inputs: vec![t("image", "BYTES", &[-1]), t("pixels", "UINT8", &[-1, -1, -1, 3])],
        outputs: {
            let mut outputs = vec![t(P_DOG, "FP32", &[-1]), t(LABEL, "BYTES", &[-1])];
            // Listed when the served graph can explain (asked for with `explain: true`).
            if state.loaded_model().is_some_and(|m| m.card.has_output(GraphOutput::LogitMap)) {
                outputs.extend([t(EVIDENCE, "FP32", &[-1, -1, -1]), t(CROP, "INT32", &[-1, 4])]);
            }
            outputs
        },
    }
}

/// Model metadata.
#[utoipa::path(get, path = "/v2/models/{name}", tag = "inference protocol",
    params(("name" = String, Path, description = "Always `catsdogs`")),
    responses((status = 200, description = "Model metadata", body = ModelMetadata),
              (status = 401, description = "Missing or invalid token", body = ProtocolError),
              (status = 404, description = "Unknown model", body = ProtocolError)),
    security(("bearer" = [])))]
pub async fn model_metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelMetadata>, ApiError> {
    check_model(&name)?;
    Ok(Json(served_model_metadata(&state)))
}

/// Model readiness.
#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "inference protocol",
    params(("name" = String, Path, description = "Always `catsdogs`")),
    responses((status = 200, description = "Ready", body = HealthStatus),
              (status = 401, description = "Missing or invalid token", body = ProtocolError),
              (status = 404, description = "Unknown model", body = ProtocolError),
              (status = 503, description = "Not loaded", body = HealthStatus)),
    security(("bearer" = [])))]
pub async fn model_ready(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<HealthStatus>), ApiError> {
    check_model(&name)?;
    let ok = state.loaded_model().is_some();
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok((status, Json(HealthStatus { live: None, ready: Some(ok), name: Some(MODEL_NAME.into()) })))
}

/// Same as `model_metadata`, under `/versions/{version}`.
pub async fn versioned_metadata(
    state: State<AppState>,
    Path((name, _version)): Path<(String, String)>,
) -> Result<Json<ModelMetadata>, ApiError> {
    model_metadata(state, Path(name)).await
}

/// Same as `model_ready`, under `/versions/{version}`.
pub async fn versioned_ready(
    state: State<AppState>,
    Path((name, _version)): Path<(String, String)>,
) -> Result<(StatusCode, Json<HealthStatus>), ApiError> {
    model_ready(state, Path(name)).await
}

/// Same as `infer`, under `/versions/{version}`.
pub async fn versioned_infer(
    state: State<AppState>,
    Path((name, _version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<InferResponse>, ApiError> {
    infer(state, Path(name), headers, body).await
}

/// Splits a body into its JSON header and binary part (binary-data extension).
fn split_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), ApiError> {
    match headers.get("inference-header-content-length") {
        None => Ok((body, &[])),
        Some(v) => {
            let n: usize = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| invalid("Inference-Header-Content-Length is not a number"))?;
            if n > body.len() {
                return Err(invalid("Inference-Header-Content-Length is larger than the body"));
            }
            Ok(body.split_at(n))
        }
    }
}

/// Number of elements a shape holds (all dimensions must be positive).
fn element_count(shape: &[i64]) -> Result<usize, ApiError> {
    shape.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().filter(|d| *d > 0).and_then(|d| acc.checked_mul(d)).ok_or_else(|| invalid("bad shape"))
    })
}

fn too_many(max: usize) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_many_files", format!("more than {max} images in one request"))
}

/// The raw JSON `data` of an input, required when no binary data came.
fn json_data(input: &InputTensor) -> Result<&str, ApiError> {
    input.data.as_deref().map(serde_json::value::RawValue::get).ok_or_else(|| invalid("input has no data"))
}

/// The encoded files of a `BYTES` input (at most `max_files`, each at most `limit` bytes).
fn bytes_elements(
    input: &InputTensor,
    binary: Option<&[u8]>,
    limit: usize,
    max_files: usize,
) -> Result<Vec<Vec<u8>>, ApiError> {
    let count = element_count(&input.shape)?;
    if count > max_files {
        return Err(too_many(max_files));
    }
    let files = match binary {
        Some(mut raw) => {
            let mut files = Vec::new();
            while !raw.is_empty() {
                if files.len() == count {
                    return Err(invalid(format!("binary data holds more than the {count} elements the shape says")));
                }
                let len_bytes: [u8; 4] =
                    raw.get(..4).and_then(|b| b.try_into().ok()).ok_or_else(|| invalid("truncated BYTES element"))?;
                let len = u32::from_le_bytes(len_bytes) as usize;
                let element =
                    raw.get(4..).and_then(|r| r.get(..len)).ok_or_else(|| invalid("truncated BYTES element"))?;
                files.push(element.to_vec());
                raw = &raw[4 + len..];
            }
            files
        }
        None => {
            // A flat list of base64 strings, as protocol clients send it.
            let strings: Vec<String> = serde_json::from_str(json_data(input)?)
                .map_err(|_| invalid("BYTES data must be a flat list of base64 strings"))?;
            if strings.len() > max_files {
                return Err(too_many(max_files));
            }
            strings
                .iter()
                .map(|s| {
                    base64::engine::general_purpose::STANDARD
                        .decode(s.trim())
                        .map_err(|_| invalid("BYTES elements in JSON must be base64-encoded files"))
                })
                .collect::<Result<_, _>>()?
        }
    };
    if files.len() != count {
        return Err(invalid(format!("shape says {count} elements, data has {}", files.len())));
    }
    if files.iter().any(|f| f.len() > limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    Ok(files)
}

/// The images of a `UINT8` / `FP32` pixel input, `[N, H, W, 3]` or `[H, W, 3]`. Sizes are
/// checked against the limits before anything is allocated; binary data must have exactly
/// the length the shape implies.
fn pixel_images(
    input: &InputTensor,
    binary: Option<&[u8]>,
    max_pixels: u64,
    max_files: usize,
) -> Result<Vec<image::RgbImage>, ApiError> {
    let shape: Vec<i64> = if input.shape.len() == 3 { [&[1], &input.shape[..]].concat() } else { input.shape.clone() };
    let [n, h, w, c] = shape[..] else { return Err(invalid("pixels must have shape [N, H, W, 3] or [H, W, 3]")) };
    if c != 3 {
        return Err(invalid("pixels must have 3 channels (RGB, last dimension)"));
    }
    let total = element_count(&shape)?;
    let (n, h, w) = (n as usize, h as usize, w as usize);
    if n > max_files {
        return Err(too_many(max_files));
    }
    if (h as u64).saturating_mul(w as u64) > max_pixels {
        return Err(ApiError::unprocessable("image_too_large", format!("images over {max_pixels} pixels are refused")));
    }
    let values: Vec<u8> = match (input.datatype.as_str(), binary) {
        ("UINT8", Some(raw)) if raw.len() == total => raw.to_vec(),
        ("FP32", Some(raw)) if Some(raw.len()) == total.checked_mul(4) => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .map(|x| (x.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect(),
        ("UINT8" | "FP32", Some(raw)) => {
            return Err(invalid(format!("binary data has {} bytes; the shape and type need another size", raw.len())));
        }
        (dt, None) => {
            let text = json_data(input)?;
            if text.len() > MAX_JSON_PIXEL_TEXT {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("pixel data over {MAX_JSON_PIXEL_TEXT} bytes of JSON: send it with the binary extension"),
                ));
            }
            let numbers: Vec<f64> =
                serde_json::from_str(text).map_err(|_| invalid("pixel data must be a flat list of numbers"))?;
            numbers
                .into_iter()
                .map(
                    |x| {
                        if dt == "FP32" { (x.clamp(0.0, 1.0) * 255.0).round() as u8 } else { x.clamp(0.0, 255.0) as u8 }
                    },
                )
                .collect()
        }
        _ => return Err(invalid("pixels must be UINT8 or FP32")),
    };
    if values.len() != total {
        return Err(invalid(format!("shape says {total} values, data has {}", values.len())));
    }
    let per = h * w * 3;
    (0..n)
        .map(|i| {
            image::RgbImage::from_raw(w as u32, h as u32, values[i * per..(i + 1) * per].to_vec())
                .ok_or_else(|| invalid("pixel buffer does not match the shape"))
        })
        .collect()
}

/// Classify images sent as an inference-protocol tensor.
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "inference protocol",
    params(("name" = String, Path, description = "Always `catsdogs`")),
    request_body(content = InferRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "`p_dog` and `label` per image", body = InferResponse),
        (status = 400, description = "Malformed request", body = ProtocolError),
        (status = 401, description = "Missing or invalid token", body = ProtocolError),
        (status = 404, description = "Unknown model", body = ProtocolError),
        (status = 413, description = "Too many images or a file over the limit", body = ProtocolError),
        (status = 400, description = "An element is not a supported image, or the request is malformed", body = ProtocolError),
        (status = 422, description = "An image is corrupt or has too many pixels", body = ProtocolError),
        (status = 503, description = "No model loaded, or the upload budget is in use", body = ProtocolError),
    ),
    security(("bearer" = [])))]
pub async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<InferResponse>, ApiError> {
    check_model(&name)?;
    state.model()?;
    let stages = StageSpans::of_current_request(state.cfg.trace_export);
    let read = Instant::now();
    // Counted once read (the route's body limit bounds it): the JSON body is not streamed.
    let mut lease = crate::limits::UploadLease::default();
    state.limits.take_upload_bytes(&mut lease, body.len())?;
    let (json, binary) = split_body(&headers, &body)?;
    let req: InferRequest =
        serde_json::from_slice(json).map_err(|e| invalid(format!("body is not an inference request: {e}")))?;
    let [input] = &req.inputs[..] else { return Err(invalid("send exactly one input (`image` or `pixels`)")) };
    // One input: its binary part is everything after the JSON header.
    let binary = match input.parameters.as_ref().and_then(|p| p.get("binary_data_size")) {
        Some(size) if size.as_u64() == Some(binary.len() as u64) => Some(binary),
        Some(_) => return Err(invalid("binary_data_size does not match the binary data after the JSON header")),
        None if !binary.is_empty() => return Err(invalid("binary data sent without binary_data_size")),
        None => None,
    };
    let inputs = image_inputs(&state, input, binary)?;
    stages.add(Stage::Read, read, Instant::now());
    let explain = match req.parameters.as_ref().and_then(|p| p.get("explain")) {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| invalid("the parameter `explain` must be true or false"))?,
    };
    if explain {
        check_can_explain(&state)?;
    }
    let (preds, model_version) = classify_request(&state, &stages, inputs).await?;
    let n = preds.len() as i64;
    let mut outputs = vec![
        OutputTensor {
            name: P_DOG.into(),
            datatype: "FP32".into(),
            shape: vec![n],
            data: preds.iter().map(|p| Value::from(f64::from(p.p_dog))).collect(),
        },
        OutputTensor {
            name: LABEL.into(),
            datatype: "BYTES".into(),
            shape: vec![n],
            data: preds.iter().map(|p| Value::from(p.label().as_str())).collect(),
        },
    ];
    if explain {
        let t = explain_tensors(&preds)?;
        outputs.push(OutputTensor {
            name: EVIDENCE.into(),
            datatype: "FP32".into(),
            shape: t.evidence_shape,
            data: t.evidence.iter().map(|&v| Value::from(f64::from(v))).collect(),
        });
        outputs.push(OutputTensor {
            name: CROP.into(),
            datatype: "INT32".into(),
            shape: vec![n, 4],
            data: t.crop.iter().map(|&v| Value::from(v)).collect(),
        });
    }
    Ok(Json(InferResponse { model_name: MODEL_NAME.into(), model_version, id: req.id, outputs }))
}

/// The protocol's output names.
pub(crate) const P_DOG: &str = "p_dog";
pub(crate) const LABEL: &str = "label";
/// Outputs added by the request parameter `explain: true`.
pub(crate) const EVIDENCE: &str = "evidence";
pub(crate) const CROP: &str = "crop";

/// The explanation outputs of one protocol answer: `evidence` (`FP32`, `[N, rows, cols]`,
/// signed for each image's answer) and `crop` (`INT32`, `[N, 4]`: x, y, width, height of
/// the model's input in the upright image, rounded to whole pixels).
pub(crate) struct ExplainTensors {
    pub evidence_shape: Vec<i64>,
    pub evidence: Vec<f32>,
    pub crop: Vec<i32>,
}

fn explanation_unavailable() -> ApiError {
    ApiError::bad_request(
        "explanation_unavailable",
        "the served model cannot explain its answers (its graph has no logit map)",
    )
}

/// Refuses an `explain` request before anything is classified or stored when the served
/// model cannot explain (400 `explanation_unavailable`).
pub(crate) fn check_can_explain(state: &AppState) -> Result<(), ApiError> {
    if state.model()?.card.has_output(GraphOutput::LogitMap) { Ok(()) } else { Err(explanation_unavailable()) }
}

/// The explanation tensors of `preds` (one model computed them all, so one grid), or a
/// 400 `explanation_unavailable` when the model that computed them has no logit map.
pub(crate) fn explain_tensors(preds: &[Classified]) -> Result<ExplainTensors, ApiError> {
    let unavailable = explanation_unavailable;
    let mut out =
        ExplainTensors { evidence_shape: vec![preds.len() as i64, 0, 0], evidence: Vec::new(), crop: Vec::new() };
    for p in preds {
        let e = p.explanation().ok_or_else(unavailable)?;
        out.evidence_shape[1..].copy_from_slice(&[e.rows as i64, e.cols as i64]);
        out.evidence.extend_from_slice(&e.evidence);
        let px = |v: f64| v.round() as i32;
        out.crop.extend([px(e.crop.x), px(e.crop.y), px(e.crop.width), px(e.crop.height)]);
    }
    Ok(out)
}

/// The images of one input tensor: encoded files (`BYTES`) or pixels (`UINT8` / `FP32`),
/// from `binary` (raw tensor data) or else the tensor's JSON `data`; within the limits of
/// `/api/predict`.
pub(crate) fn image_inputs(
    state: &AppState,
    input: &InputTensor,
    binary: Option<&[u8]>,
) -> Result<Vec<ImageInput>, ApiError> {
    Ok(match input.datatype.as_str() {
        "BYTES" => bytes_elements(input, binary, state.cfg.max_upload_bytes, state.cfg.max_batch_files)?
            .into_iter()
            .map(ImageInput::Encoded)
            .collect(),
        "UINT8" | "FP32" => {
            let max_pixels = state.model()?.preprocess_config().max_pixels;
            pixel_images(input, binary, max_pixels, state.cfg.max_batch_files)?
                .into_iter()
                .map(ImageInput::Pixels)
                .collect()
        }
        other => return Err(invalid(format!("unsupported datatype {other}; use BYTES, UINT8 or FP32"))),
    })
}

/// Classifies the images of one protocol request (REST or gRPC) and stores one prediction
/// row per image, as `/api/predict` does. The protocol answers a request as a whole: the
/// first failed image fails it. Returns the answers and the version of the model that
/// computed them.
pub(crate) async fn classify_request(
    state: &AppState,
    stages: &StageSpans,
    inputs: Vec<ImageInput>,
) -> Result<(Vec<Classified>, String), ApiError> {
    let started = Instant::now();
    let results = state.engine.classify_all(inputs).await?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    stages.classified(started, results.iter().filter_map(|r| r.as_ref().ok()));
    let stored = Instant::now();
    let mut preds: Vec<Classified> = Vec::with_capacity(results.len());
    let mut first_error = None;
    for r in results {
        let id = catsdogs_store::PredictionId::new().to_string();
        match r {
            Ok(p) => {
                record(state, &id, "", Ok(&p), ms, None, None).await;
                preds.push(p);
            }
            Err(e) => {
                let e = ApiError::from(e);
                record(state, &id, "", Err(&e), ms, None, None).await;
                first_error.get_or_insert(e);
            }
        }
    }
    stages.add(Stage::Store, stored, Instant::now());
    if let Some(e) = first_error {
        return Err(e);
    }
    // One request is classified by one model (the engine pins it), whose version this is.
    let model_version = preds.first().map_or_else(|| state.model_version(), |p| p.model_version.to_string());
    Ok((preds, model_version))
}
