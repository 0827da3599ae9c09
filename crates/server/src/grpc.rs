//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, the service
//! KServe, Triton and MLServer clients call; Triton's convention puts it on port 8001).
//! It is a second door to the same server: the same engine, bearer tokens (`authorization`
//! metadata), limits and prediction rows as the REST protocol in [`crate::api::v2`], whose
//! parsing and classification it calls. Inputs and outputs are those of the REST protocol:
//! `image` (`BYTES`) or `pixels` (`UINT8` / `FP32`) in; `p_dog` (`FP32`) and `label`
//! (`BYTES`) out, as raw contents when the request came raw (what `tritonclient` sends),
//! typed contents otherwise.
use std::collections::HashMap;
use std::time::Instant;

use axum::http::StatusCode;
use tonic::{Request, Response, Status};

use crate::api::v2::{self, CROP, EVIDENCE, InputTensor, LABEL, MODEL_NAME, P_DOG};
use crate::auth::{self, SessionAccess};
use crate::error::ApiError;
use crate::state::AppState;
use crate::telemetry::{Stage, StageSpans};

/// Code generated at build time from `proto/grpc_predict_v2.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::infer_parameter::ParameterChoice;
use proto::model_infer_request::InferInputTensor;
use proto::model_infer_response::InferOutputTensor;
use proto::{
    InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
    ModelReadyRequest, ModelReadyResponse, ServerLiveRequest, ServerLiveResponse, ServerMetadataRequest,
    ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse, model_metadata_response,
};

/// The gRPC service over the server's state.
pub struct InferenceService {
    state: AppState,
}

/// The tonic service to mount, with message limits raised to what the REST protocol
/// accepts (tonic's default is 4 MiB: one 12 MP photo would not fit).
pub fn service(state: AppState) -> GrpcInferenceServiceServer<InferenceService> {
    let limit = message_limit(&state);
    GrpcInferenceServiceServer::new(InferenceService { state })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
}

/// Largest request message: a full batch of files at the upload limit, plus framing.
pub fn message_limit(state: &AppState) -> usize {
    state.cfg.max_upload_bytes.saturating_mul(state.cfg.max_batch_files.max(1)).saturating_add(64 * 1024)
}

/// An API error as a gRPC status: the code the protocol's clients expect for its HTTP
/// status, the message prefixed with our stable error code.
pub fn status_of(e: &ApiError) -> Status {
    let message = format!("{}: {}", e.code, e.message);
    match e.status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY | StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            Status::invalid_argument(message)
        }
        StatusCode::UNAUTHORIZED => Status::unauthenticated(message),
        StatusCode::FORBIDDEN => Status::permission_denied(message),
        StatusCode::NOT_FOUND => Status::not_found(message),
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => Status::resource_exhausted(message),
        StatusCode::SERVICE_UNAVAILABLE => Status::unavailable(message),
        _ => Status::internal(message),
    }
}

impl InferenceService {
    /// The caller's bearer token, checked as the REST routes check it.
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let headers = request.metadata().clone().into_headers();
        auth::authorize(&self.state, &headers, SessionAccess::Operator).map(|_| ()).map_err(|e| status_of(&e))
    }

    fn ready(&self) -> bool {
        self.state.loaded_model().is_some()
    }
}

/// The raw bytes of one typed input, laid out as raw contents would be (`BYTES`: each
/// element after its 4-byte little-endian length), so both forms go through one parser.
fn typed_as_raw(tensor: &InferInputTensor) -> Result<Vec<u8>, ApiError> {
    let contents = tensor.contents.as_ref().ok_or_else(|| v2::invalid("input has no contents"))?;
    Ok(match tensor.datatype.as_str() {
        "BYTES" => {
            let mut raw = Vec::with_capacity(contents.bytes_contents.iter().map(|b| b.len() + 4).sum());
            for element in &contents.bytes_contents {
                push_bytes_element(&mut raw, element)?;
            }
            raw
        }
        "UINT8" => contents
            .uint_contents
            .iter()
            .map(|&v| u8::try_from(v).map_err(|_| v2::invalid("UINT8 values must be 0-255")))
            .collect::<Result<_, _>>()?,
        "FP32" => contents.fp32_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        other => return Err(v2::invalid(format!("unsupported datatype {other}; use BYTES, UINT8 or FP32"))),
    })
}

/// Which outputs to answer, in order: those requested, or `p_dog` and `label` (and, with
/// the parameter `explain: true`, `evidence` and `crop`). Naming `evidence` or `crop` asks
/// for the explanation too.
fn requested_outputs(request: &ModelInferRequest) -> Result<Vec<&'static str>, ApiError> {
    let explain = match request.parameters.get("explain").and_then(|p| p.parameter_choice.as_ref()) {
        None => false,
        Some(ParameterChoice::BoolParam(b)) => *b,
        Some(_) => return Err(v2::invalid("the parameter `explain` must be a bool")),
    };
    if request.outputs.is_empty() {
        return Ok(if explain { vec![P_DOG, LABEL, EVIDENCE, CROP] } else { vec![P_DOG, LABEL] });
    }
    request
        .outputs
        .iter()
        .map(|o| match o.name.as_str() {
            P_DOG => Ok(P_DOG),
            LABEL => Ok(LABEL),
            EVIDENCE => Ok(EVIDENCE),
            CROP => Ok(CROP),
            other => Err(v2::invalid(format!(
                "unknown output {other:?}; outputs are {P_DOG}, {LABEL}, {EVIDENCE} and {CROP}"
            ))),
        })
        .collect()
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: self.ready() }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        self.authorize(&request)?;
        v2::check_model(&request.get_ref().name).map_err(|e| status_of(&e))?;
        Ok(Response::new(ModelReadyResponse { ready: self.ready() }))
    }

    async fn server_metadata(
        &self,
        request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        self.authorize(&request)?;
        let axum::Json(m) = v2::server_metadata().await;
        Ok(Response::new(ServerMetadataResponse { name: m.name, version: m.version, extensions: m.extensions }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        self.authorize(&request)?;
        v2::check_model(&request.get_ref().name).map_err(|e| status_of(&e))?;
        let m = v2::served_model_metadata(&self.state);
        let tensors = |ts: Vec<v2::TensorMetadata>| {
            ts.into_iter()
                .map(|t| model_metadata_response::TensorMetadata { name: t.name, datatype: t.datatype, shape: t.shape })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: m.name,
            versions: m.versions,
            platform: m.platform,
            inputs: tensors(m.inputs),
            outputs: tensors(m.outputs),
        }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        infer(&self.state, request).await.map(Response::new).map_err(|e| status_of(&e))
    }
}

/// One `ModelInfer`: the same checks, limits, engine and rows as `POST /v2/models/{name}/infer`.
async fn infer(state: &AppState, request: ModelInferRequest) -> Result<ModelInferResponse, ApiError> {
    v2::check_model(&request.model_name)?;
    state.model()?;
    let stages = StageSpans::of_current_request(state.cfg.trace_export);
    let read = Instant::now();
    let [tensor] = &request.inputs[..] else { return Err(v2::invalid("send exactly one input (`image` or `pixels`)")) };
    let raw_request = !request.raw_input_contents.is_empty();
    let raw = match &request.raw_input_contents[..] {
        [] => std::borrow::Cow::Owned(typed_as_raw(tensor)?),
        // Borrowed: the request already holds the bytes (up to a full batch of files).
        [raw] => std::borrow::Cow::Borrowed(&raw[..]),
        _ => return Err(v2::invalid("raw_input_contents must hold exactly one entry per input")),
    };
    // Counted like a REST body (the message limit bounds it).
    let mut lease = crate::limits::UploadLease::default();
    state.limits.take_upload_bytes(&mut lease, raw.len())?;
    let described = InputTensor::described(&tensor.name, &tensor.datatype, &tensor.shape);
    let outputs = requested_outputs(&request)?;
    if outputs.iter().any(|o| [EVIDENCE, CROP].contains(o)) {
        v2::check_can_explain(state)?;
    }
    let inputs = v2::image_inputs(state, &described, Some(&raw))?;
    drop(raw);
    // The uploaded bytes are decoded now: keep only the id while the model runs.
    let ModelInferRequest { id, .. } = request;
    stages.add(Stage::Read, read, Instant::now());
    let (preds, model_version) = v2::classify_request(state, &stages, inputs).await?;
    let n = preds.len() as i64;
    let mut response = ModelInferResponse {
        model_name: MODEL_NAME.into(),
        model_version,
        id,
        parameters: HashMap::new(),
        outputs: Vec::with_capacity(outputs.len()),
        raw_output_contents: Vec::new(),
    };
    let explained =
        if outputs.iter().any(|o| [EVIDENCE, CROP].contains(o)) { Some(v2::explain_tensors(&preds)?) } else { None };
    for name in outputs {
        let (datatype, shape, contents) = match (name, &explained) {
            (P_DOG, _) => (
                "FP32",
                vec![n],
                InferTensorContents { fp32_contents: preds.iter().map(|p| p.p_dog).collect(), ..Default::default() },
            ),
            (EVIDENCE, Some(t)) => (
                "FP32",
                t.evidence_shape.clone(),
                InferTensorContents { fp32_contents: t.evidence.clone(), ..Default::default() },
            ),
            (CROP, Some(t)) => {
                ("INT32", vec![n, 4], InferTensorContents { int_contents: t.crop.clone(), ..Default::default() })
            }
            _ => {
                let labels = preds.iter().map(|p| p.label().as_str().as_bytes().to_vec()).collect();
                ("BYTES", vec![n], InferTensorContents { bytes_contents: labels, ..Default::default() })
            }
        };
        let contents = if raw_request {
            response.raw_output_contents.push(contents_as_raw(&contents));
            None
        } else {
            Some(contents)
        };
        response.outputs.push(InferOutputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            parameters: HashMap::new(),
            contents,
        });
    }
    Ok(response)
}

/// FP32, INT32 or BYTES contents as raw output bytes (little-endian numbers;
/// length-prefixed elements).
fn contents_as_raw(contents: &InferTensorContents) -> Vec<u8> {
    let mut raw: Vec<u8> = contents.fp32_contents.iter().flat_map(|v| v.to_le_bytes()).collect();
    raw.extend(contents.int_contents.iter().flat_map(|v| v.to_le_bytes()));
    for element in &contents.bytes_contents {
        // Output elements are labels ("cat", "dog"): never near the 4 GiB a length can say.
        let _ = push_bytes_element(&mut raw, element);
    }
    raw
}

/// Appends one `BYTES` element in the protocol's raw layout: its 4-byte little-endian
/// length, then the element.
fn push_bytes_element(raw: &mut Vec<u8>, element: &[u8]) -> Result<(), ApiError> {
    let len = u32::try_from(element.len()).map_err(|_| v2::invalid("BYTES element over 4 GiB"))?;
    raw.extend_from_slice(&len.to_le_bytes());
    raw.extend_from_slice(element);
    Ok(())
}
