//! `POST /api/predict` and `POST /api/predict/batch`.
use std::time::Instant;

use axum::Json;
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Extension, Multipart, State};
use axum::http::StatusCode;
use catsdogs_core::{Classified, ImageInput};
use catsdogs_model::Label;
use catsdogs_store::{PredictionRecord, PredictionStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorDetail};
use crate::limits::{Limits, Refusal, UploadLease};
use crate::state::AppState;
use crate::telemetry::{Stage, StageSpans};

/// The seed's percentages, formatted as strings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Probabilities {
    #[schema(example = "12.35%")]
    pub cat: String,
    #[schema(example = "87.65%")]
    pub dog: String,
}

/// One classified image: the seed's fields (same names and formats) plus ours.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PredictResponse {
    /// Id of the stored prediction; send it back with feedback.
    pub id: String,
    /// The uploaded file name, echoed (only a pseudonym of it is stored).
    pub filename: String,
    #[schema(example = "Dog")]
    pub prediction: String,
    #[schema(example = "87.65%")]
    pub confidence: String,
    pub probabilities: Probabilities,
    /// `cat` or `dog`.
    #[schema(value_type = String, example = "dog")]
    pub label: Label,
    pub p_dog: f64,
    pub p_cat: f64,
    pub model_version: String,
    /// Decode + resize + forward time on the server, in milliseconds.
    pub latency_ms: f64,
    /// False when the image probably shows neither a cat nor a dog (models with an
    /// ImageNet head; absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_cat_or_dog: Option<bool>,
    /// ImageNet probability mass on cat and dog classes, the score behind `is_cat_or_dog`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cat_or_dog_score: Option<f64>,
    /// True when the image was kept for retraining (the request's `consent` field).
    pub image_kept: bool,
    /// What the model looked at (the request's `explain` field; absent otherwise, and for
    /// models whose graph has no logit map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<ExplanationBody>,
}

/// The class-activation map of one answer: the model's head applied to each cell of its
/// last feature map, signed for the answered class.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExplanationBody {
    /// `[rows, columns]` of the map (7x7 for the default model, 16x16 for the seed CNN).
    #[schema(example = json!([7, 7]))]
    pub grid: [usize; 2],
    /// Row-major, `rows x columns` numbers in logit units: positive cells support the
    /// answered class, negative ones the other; their mean is the answer's logit.
    pub evidence: Vec<f32>,
    /// Where the model's input was taken from in the uploaded image.
    pub crop: CropBody,
}

/// A rectangle of the uploaded image, upright (EXIF orientation applied), in its own
/// pixels whatever scale it was decoded at.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CropBody {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    /// The side of a square centre crop; `null` when the whole image was squashed into
    /// the model input (the seed CNN).
    pub size: Option<f64>,
}

impl ExplanationBody {
    /// The explanation of `p`, when its model computed a logit map.
    pub fn of(p: &Classified) -> Option<Self> {
        let e = p.explanation()?;
        let round = |v: f64| (v * 100.0).round() / 100.0;
        Some(Self {
            grid: [e.rows, e.cols],
            evidence: e.evidence,
            crop: CropBody {
                x: round(e.crop.x),
                y: round(e.crop.y),
                width: round(e.crop.width),
                height: round(e.crop.height),
                size: e.crop.square.map(round),
            },
        })
    }
}

/// One file of a batch: a prediction or an error, never both.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchItem {
    pub filename: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<PredictResponse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
    /// HTTP status this file would have had on `/api/predict`.
    pub status: u16,
}

/// Results in upload order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchItem>,
    pub succeeded: usize,
    pub failed: usize,
    pub latency_ms: f64,
}

/// Multipart form with one image (OpenAPI only).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadSchema {
    /// JPEG, PNG, GIF, WebP or BMP; the type is sniffed from the content.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// `true` to let the service keep the image to improve the model (off by default;
    /// see docs/privacy.md). Kept images are erased with their prediction.
    consent: Option<bool>,
    /// `true` to add `explanation`: what the model looked at (see docs/explanations.md).
    explain: Option<bool>,
}

/// Multipart form with several images (OpenAPI only).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BatchUploadForm {
    /// Repeat the `file` field once per image.
    #[schema(value_type = Vec<String>, format = Binary)]
    file: Vec<Vec<u8>>,
    /// `true` to let the service keep the images to improve the model (off by default).
    consent: Option<bool>,
    /// `true` to add `explanation` to each result (see docs/explanations.md).
    explain: Option<bool>,
}

fn pct(p: f64) -> String {
    format!("{:.2}%", p * 100.0)
}

/// The answer for one classified file; its `model_version` is the version of the model
/// that computed it, whatever is served by the time the answer is written.
pub(crate) fn response(
    id: String,
    filename: String,
    p: &Classified,
    latency_ms: f64,
    image_kept: bool,
    explain: bool,
) -> PredictResponse {
    let p_dog = f64::from(p.p_dog);
    let p_cat = 1.0 - p_dog;
    PredictResponse {
        id,
        filename,
        prediction: p.label().title().into(),
        confidence: pct(p_dog.max(p_cat)),
        probabilities: Probabilities { cat: pct(p_cat), dog: pct(p_dog) },
        label: p.label(),
        p_dog,
        p_cat,
        model_version: p.model_version.to_string(),
        latency_ms,
        is_cat_or_dog: p.is_cat_or_dog,
        cat_or_dog_score: p.cat_or_dog_score.map(f64::from),
        image_kept,
        explanation: if explain { ExplanationBody::of(p) } else { None },
    }
}

pub(crate) fn multipart_rejection(e: MultipartRejection) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_content_type",
        format!("expected a multipart/form-data body with a `file` field ({e})"),
    )
}

/// Why a field of a multipart form could not be read.
#[derive(Debug)]
pub(crate) enum FieldError {
    /// Over the byte limit: this file is refused, the rest of the form can still be read.
    TooLarge(usize),
    /// The multipart stream itself is broken: nothing after this point can be read.
    Malformed(String),
    /// The server holds as many upload bytes as its budget allows: the request stops here.
    OverBudget,
}

impl FieldError {
    /// Whether nothing after this error can be read.
    fn is_fatal(&self) -> bool {
        matches!(self, Self::Malformed(_) | Self::OverBudget)
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        match e {
            FieldError::TooLarge(limit) => ApiError::payload_too_large(limit),
            FieldError::Malformed(why) => {
                ApiError::bad_request("invalid_multipart", format!("malformed multipart body: {why}"))
            }
            FieldError::OverBudget => Refusal::UploadBudget.into(),
        }
    }
}

/// Why a form was refused as a whole.
#[derive(Debug)]
pub(crate) enum FormError {
    /// The page form's CSRF token is missing or wrong (the page answers with its own view).
    Csrf,
    Api(ApiError),
}

impl From<FieldError> for FormError {
    fn from(e: FieldError) -> Self {
        Self::Api(e.into())
    }
}

impl From<ApiError> for FormError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<FormError> for ApiError {
    fn from(e: FormError) -> Self {
        match e {
            FormError::Csrf => ApiError::new(StatusCode::FORBIDDEN, "csrf_failed", "missing or invalid CSRF token"),
            FormError::Api(e) => e,
        }
    }
}

fn multipart_error(e: MultipartError, limit: usize) -> FieldError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        FieldError::TooLarge(limit)
    } else {
        FieldError::Malformed(e.body_text())
    }
}

/// Reads one field, refusing more than `limit` bytes. With a budget, every chunk is
/// counted against the process-wide upload budget as it arrives, before it is kept.
async fn read_limited(
    mut field: Field<'_>,
    limit: usize,
    mut budget: Option<(&Limits, &mut UploadLease)>,
) -> Result<Vec<u8>, FieldError> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
        if buf.len() + chunk.len() > limit {
            return Err(FieldError::TooLarge(limit));
        }
        if let Some((limits, lease)) = budget.as_mut() {
            limits.take_upload_bytes(lease, chunk.len()).map_err(|_| FieldError::OverBudget)?;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// How much one request may upload: files and bytes per file (smaller for visitors).
#[derive(Debug, Clone, Copy)]
pub(crate) struct UploadRules {
    pub max_files: usize,
    pub max_bytes: usize,
}

impl UploadRules {
    /// The rules for a caller: a visitor session gets the visitor limits; `max_files` caps
    /// the count further (1 for `/api/predict`).
    pub fn for_caller(state: &AppState, visitor: bool, max_files: usize) -> Self {
        let (files, bytes) = state.cfg.upload_limits(visitor);
        Self { max_files: files.min(max_files), max_bytes: bytes }
    }
}

/// A file read from the form, or why it could not be read.
pub(crate) struct Upload {
    pub filename: String,
    pub bytes: Result<Vec<u8>, ApiError>,
}

/// What a multipart form carried: the files, the page's CSRF token if present, and
/// whether the uploader consented to the images being kept.
pub(crate) struct UploadForm {
    pub uploads: Vec<Upload>,
    pub csrf: Option<String>,
    pub consent: bool,
    /// Whether the caller asked for explanations (`explain`).
    pub explain: bool,
    /// The upload budget these files hold until the request ends.
    pub lease: UploadLease,
}

/// Checks the page form's CSRF token.
pub(crate) type CsrfCheck<'a> = &'a (dyn Fn(&str) -> bool + Send + Sync);

/// Reads every `file` (or `files`) field, a `csrf` field and the `consent` and `explain`
/// flags (`true`, `1`, `on` or `yes`, anywhere in the form); other fields are ignored.
/// With `csrf_check`, a valid `csrf` field must come before the first file, so a forged
/// form is refused before any upload is buffered.
pub(crate) async fn read_uploads(
    mut mp: Multipart,
    rules: UploadRules,
    limits: &Limits,
    csrf_check: Option<CsrfCheck<'_>>,
) -> Result<UploadForm, FormError> {
    let UploadRules { max_files, max_bytes: limit } = rules;
    let mut out =
        UploadForm { uploads: Vec::new(), csrf: None, consent: false, explain: false, lease: UploadLease::default() };
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(e, limit).into()),
        };
        match field.name() {
            Some("file" | "files") => {}
            Some("csrf") => {
                let token = String::from_utf8_lossy(&read_limited(field, 256, None).await?).into_owned();
                if csrf_check.is_some_and(|ok| !ok(&token)) {
                    return Err(FormError::Csrf);
                }
                out.csrf = Some(token);
                continue;
            }
            Some(name @ ("consent" | "explain")) => {
                let is_consent = name == "consent";
                let v = String::from_utf8_lossy(&read_limited(field, 16, None).await?).trim().to_ascii_lowercase();
                let set = matches!(v.as_str(), "true" | "1" | "on" | "yes");
                if is_consent {
                    out.consent = set
                } else {
                    out.explain = set
                }
                continue;
            }
            _ => continue,
        }
        if csrf_check.is_some() && out.csrf.is_none() {
            return Err(FormError::Csrf);
        }
        let filename = field.file_name().unwrap_or_default().to_string();
        if out.uploads.len() == max_files {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_files",
                format!("more than {max_files} files in one request"),
            )
            .into());
        }
        let bytes = read_limited(field, limit, Some((limits, &mut out.lease))).await;
        if matches!(bytes, Err(FieldError::OverBudget)) {
            return Err(FieldError::OverBudget.into());
        }
        // A browser form submits an unnamed empty part when no file was chosen.
        if filename.is_empty() && matches!(&bytes, Ok(b) if b.is_empty()) {
            continue;
        }
        let fatal = bytes.as_ref().is_err_and(FieldError::is_fatal);
        out.uploads.push(Upload { filename, bytes: bytes.map_err(ApiError::from) });
        if fatal {
            break;
        }
    }
    Ok(out)
}

/// Keeps a consented image within the quotas (per visitor session and in total); over a
/// quota or on a failure (logged) the image is not kept, and the prediction still answers.
pub(crate) async fn keep_image(state: &AppState, bytes: Vec<u8>, visitor_session: Option<&str>) -> Option<String> {
    let len = bytes.len();
    if !state.limits.may_keep_image(visitor_session, len) {
        return None;
    }
    let images = state.images.clone();
    match tokio::task::spawn_blocking(move || images.save(&bytes)).await {
        Ok(Ok(r)) => {
            state.limits.image_kept(len);
            Some(r)
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot keep the consented image");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "image writer crashed");
            None
        }
    }
}

pub(crate) async fn record(
    state: &AppState,
    id: &str,
    filename: &str,
    outcome: Result<&Classified, &ApiError>,
    latency_ms: f64,
    image_ref: Option<String>,
    visitor_session: Option<&str>,
) {
    let (status, label, p_dog, error_code, model_version) = match outcome {
        Ok(p) => (PredictionStatus::Ok, Some(p.label()), Some(f64::from(p.p_dog)), None, p.model_version.to_string()),
        // No forward pass: the row names the model served when the request failed.
        Err(e) => (PredictionStatus::Error, None, None, Some(e.code.to_string()), state.model_version()),
    };
    let rec = PredictionRecord {
        id: id.to_string(),
        created_at: (state.cfg.clock)(),
        model_version,
        status,
        label,
        p_dog,
        latency_ms,
        error_code,
        file_ref: state.pseudonymise((!filename.is_empty()).then_some(filename)),
        image_ref,
        owner: visitor_session.map(|s| state.session_owner(s)),
        signals: outcome.ok().map(|p| catsdogs_store::DriftSignals {
            embedding: p.embedding.clone(),
            properties: p.properties,
            is_cat_or_dog: p.is_cat_or_dog,
        }),
    };
    state.record_prediction(rec).await;
}

/// Classify one image.
#[utoipa::path(
    post, path = "/api/predict", tag = "predict",
    request_body(content = UploadSchema, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Prediction", body = PredictResponse),
        (status = 400, description = "Missing `file` field, empty file or malformed form", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 413, description = "Upload over the size limit", body = crate::error::ErrorBody),
        (status = 400, description = "The file is not a supported image (`unsupported_media_type`)", body = crate::error::ErrorBody),
        (status = 415, description = "Not a multipart/form-data body", body = crate::error::ErrorBody),
        (status = 422, description = "Corrupt image or too many pixels", body = crate::error::ErrorBody),
        (status = 429, description = "Over the rate limit (`rate_limited`, with `Retry-After`)", body = crate::error::ErrorBody),
        (status = 503, description = "No model loaded, or the upload budget is in use (`overloaded`, with `Retry-After`)", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn predict(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    mp: Result<Multipart, MultipartRejection>,
) -> Result<Json<PredictResponse>, ApiError> {
    state.model()?;
    let stages = StageSpans::of_current_request(state.cfg.trace_export);
    let visitor = caller.visitor_session();
    let rules = UploadRules::for_caller(&state, visitor.is_some(), 1);
    let mut form =
        stages.time(Stage::Read, read_uploads(mp.map_err(multipart_rejection)?, rules, &state.limits, None)).await?;
    let Some(upload) = form.uploads.pop() else {
        return Err(ApiError::bad_request("missing_file", "the form has no `file` field"));
    };
    let id = catsdogs_store::PredictionId::new().to_string();
    let bytes = match upload.bytes {
        Ok(b) => b,
        Err(e) => {
            record(&state, &id, &upload.filename, Err(&e), 0.0, None, visitor).await;
            return Err(e);
        }
    };
    let kept = form.consent.then(|| bytes.clone());
    let started = Instant::now();
    let outcome = state.engine.classify(ImageInput::Encoded(bytes)).await;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    match outcome {
        Ok(p) => {
            stages.classified(started, [&p]);
            let image_kept = stages
                .time(Stage::Store, async {
                    let image_ref = match kept {
                        Some(b) => keep_image(&state, b, visitor).await,
                        None => None,
                    };
                    let image_kept = image_ref.is_some();
                    record(&state, &id, &upload.filename, Ok(&p), ms, image_ref, visitor).await;
                    image_kept
                })
                .await;
            Ok(Json(response(id, upload.filename, &p, ms, image_kept, form.explain)))
        }
        Err(e) => {
            let e = ApiError::from(e);
            stages.time(Stage::Store, record(&state, &id, &upload.filename, Err(&e), ms, None, visitor)).await;
            Err(e)
        }
    }
}

/// Classify several images in one request; a bad file does not fail the others.
#[utoipa::path(
    post, path = "/api/predict/batch", tag = "predict",
    request_body(content = BatchUploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "One result per file, in order", body = BatchResponse),
        (status = 400, description = "No `file` field", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 413, description = "Too many files or request too large", body = crate::error::ErrorBody),
        (status = 415, description = "Not a multipart/form-data body", body = crate::error::ErrorBody),
        (status = 429, description = "Over the rate limit (`rate_limited`, with `Retry-After`)", body = crate::error::ErrorBody),
        (status = 503, description = "No model loaded, or the upload budget is in use (`overloaded`, with `Retry-After`)", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn predict_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    mp: Result<Multipart, MultipartRejection>,
) -> Result<Json<BatchResponse>, ApiError> {
    state.model()?;
    let visitor = caller.visitor_session();
    let rules = UploadRules::for_caller(&state, visitor.is_some(), usize::MAX);
    let stages = StageSpans::of_current_request(state.cfg.trace_export);
    let form =
        stages.time(Stage::Read, read_uploads(mp.map_err(multipart_rejection)?, rules, &state.limits, None)).await?;
    if form.uploads.is_empty() {
        return Err(ApiError::bad_request("missing_file", "the form has no `file` field"));
    }
    let (items, ms) = classify_uploads(&state, &stages, form.uploads, (form.consent, form.explain), visitor).await?;
    let failed = items.iter().filter(|i| i.error.is_some()).count();
    Ok(Json(BatchResponse { succeeded: items.len() - failed, results: items, failed, latency_ms: ms }))
}

/// Classifies the readable files together and records one prediction row per file, each
/// keeping its upload slot (and, with `consent`, its image; with `explain`, answers carry
/// their explanation); used by the batch route and the page's plain form.
pub(crate) async fn classify_uploads(
    state: &AppState,
    stages: &StageSpans,
    uploads: Vec<Upload>,
    (consent, explain): (bool, bool),
    visitor_session: Option<&str>,
) -> Result<(Vec<BatchItem>, f64), ApiError> {
    let mut files = Vec::new();
    let mut kept: Vec<Option<Vec<u8>>> = Vec::with_capacity(uploads.len());
    let mut slots = Vec::new();
    let mut results: Vec<Option<Result<Classified, ApiError>>> = Vec::with_capacity(uploads.len());
    let mut names = Vec::with_capacity(uploads.len());
    for (i, u) in uploads.into_iter().enumerate() {
        names.push(u.filename);
        kept.push(match &u.bytes {
            Ok(b) if consent => Some(b.clone()),
            _ => None,
        });
        match u.bytes {
            Ok(b) => {
                files.push(b);
                slots.push(i);
                results.push(None);
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    let started = Instant::now();
    let preds = if files.is_empty() {
        Vec::new()
    } else {
        state.engine.classify_all(files.into_iter().map(ImageInput::Encoded).collect()).await?
    };
    let ms = started.elapsed().as_secs_f64() * 1e3;
    stages.classified(started, preds.iter().filter_map(|r| r.as_ref().ok()));
    for (slot, r) in slots.into_iter().zip(preds) {
        results[slot] = Some(r.map_err(ApiError::from));
    }
    let stored = Instant::now();
    let mut items = Vec::with_capacity(results.len());
    for ((name, r), bytes) in names.into_iter().zip(results).zip(kept) {
        let id = catsdogs_store::PredictionId::new().to_string();
        let r = r.unwrap_or_else(|| Err(ApiError::internal("file was not classified")));
        match r {
            Ok(p) => {
                let image_ref = match bytes {
                    Some(b) => keep_image(state, b, visitor_session).await,
                    None => None,
                };
                let image_kept = image_ref.is_some();
                record(state, &id, &name, Ok(&p), ms, image_ref, visitor_session).await;
                let res = response(id, name.clone(), &p, ms, image_kept, explain);
                items.push(BatchItem { filename: name, result: Some(res), error: None, status: 200 });
            }
            Err(e) => {
                record(state, &id, &name, Err(&e), ms, None, visitor_session).await;
                items.push(BatchItem {
                    filename: name,
                    result: None,
                    error: Some(e.detail()),
                    status: e.status.as_u16(),
                });
            }
        }
    }
    stages.add(Stage::Store, stored, Instant::now());
    Ok((items, ms))
}
