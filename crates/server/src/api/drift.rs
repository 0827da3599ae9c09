//! `GET /api/metrics/drift`: label-free monitoring of the served model (docs/drift.md).
//! A window of recent predictions (today by default, or the last N) is compared with the
//! model's reference statistics: estimated accuracy (CBPE) beside the accuracy feedback
//! measured, output drift (KS, PSI), embedding drift (MMD²), input-property drift and the
//! "neither" rate, and one verdict. The same figures are Prometheus gauges, refreshed by
//! the hourly check, which logs a warning when the verdict turns to drifted.
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Json;
use axum::extract::{Query, State};
use catsdogs_core::LoadedModel;
use catsdogs_model::drift::{self, DriftAssessment, DriftConfig, Observation, ReferenceStats};
use catsdogs_store::{DriftRow, DriftWindow, DriftWindowSummary};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::state::AppState;

/// Largest `last` accepted.
pub const MAX_LAST: u32 = 10_000;
/// Most predictions of one day compared (the newest).
const MAX_DAY_ROWS: u32 = 10_000;

#[derive(Debug, Deserialize, IntoParams)]
pub struct DriftQuery {
    /// Compare the last N successful predictions (1 to 10,000) instead of today's.
    pub last: Option<u32>,
}

/// The reference a window was compared with.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReferenceInfo {
    pub model_version: String,
    pub source: String,
    pub count: usize,
    /// Whether the reference averaged each photo with its mirror image (`null`: a file
    /// written before the setting was recorded).
    pub tta_flip: Option<bool>,
    /// `false` when the server answers otherwise (`--tta-flip` on one side only): P(dog)
    /// and the embeddings are then not comparable and output or embedding drift may fire
    /// for that reason alone; rebuild the reference with the server's setting.
    pub matches_server: Option<bool>,
}

/// The window compared.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WindowInfo {
    /// `last` or `day`.
    pub kind: String,
    /// N, for `last`.
    pub last: Option<u32>,
    /// The UTC date, for `day`.
    pub day: Option<String>,
    /// The oldest and newest prediction of the window.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub from: Option<DateTime<Utc>>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub to: Option<DateTime<Utc>>,
}

/// The drift report of one window.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DriftReport {
    pub window: WindowInfo,
    pub model_version: String,
    /// `null` when the served model has no reference statistics (`catsdogs reference`).
    pub reference: Option<ReferenceInfo>,
    pub n: usize,
    /// Mean probability of the answered class (CBPE), a fraction in [0, 1].
    pub estimated_accuracy: Option<f64>,
    /// Share of answers feedback called right, over those with feedback.
    pub feedback_accuracy: Option<f64>,
    pub feedback_count: usize,
    /// `estimated_accuracy - feedback_accuracy`.
    pub accuracy_gap: Option<f64>,
    #[schema(value_type = Option<Object>)]
    pub output_drift: Option<drift::OutputDrift>,
    #[schema(value_type = Object)]
    pub embedding_drift: drift::EmbeddingDrift,
    /// Per property (`distance` in reference standard deviations), and `drifted`.
    #[schema(value_type = Object)]
    pub input_drift: serde_json::Value,
    pub neither_rate: Option<f64>,
    pub reference_neither_rate: Option<f64>,
    pub neither_p_value: Option<f64>,
    pub drifted: bool,
    pub reasons: Vec<String>,
    /// The settings the verdict used.
    #[schema(value_type = Object)]
    pub config: DriftConfig,
}

fn observation(r: &DriftRow) -> Observation {
    Observation {
        p_dog: r.p_dog as f32,
        embedding: r.signals.as_ref().and_then(|s| s.embedding.clone()),
        properties: r.signals.as_ref().map(|s| s.properties),
        is_cat_or_dog: r.signals.as_ref().and_then(|s| s.is_cat_or_dog),
    }
}

/// Compares `rows` with `reference` (CPU work: run it on the blocking pool).
fn report(
    window: WindowInfo,
    model_version: String,
    reference: Option<&ReferenceStats>,
    server_flips: bool,
    rows: &[DriftRow],
    config: &DriftConfig,
) -> DriftReport {
    let observations: Vec<Observation> = rows.iter().map(observation).collect();
    let (feedback_accuracy, feedback_count) = feedback_accuracy(rows);
    let a = drift::assess(reference, &observations, config);
    let DriftAssessment {
        n,
        estimated_accuracy,
        output_drift,
        embedding_drift,
        input_drift,
        input_drifted,
        neither_rate,
        reference_neither_rate,
        neither_p_value,
        drifted,
        reasons,
    } = a;
    let mut input: BTreeMap<String, serde_json::Value> =
        input_drift.into_iter().map(|(k, v)| (k, serde_json::to_value(v).unwrap_or_default())).collect();
    input.insert("drifted".into(), serde_json::json!(input_drifted));
    DriftReport {
        window,
        model_version,
        reference: reference.map(|r| ReferenceInfo {
            model_version: r.model_version.clone(),
            source: r.source.clone(),
            count: r.count,
            tta_flip: r.tta_flip,
            matches_server: r.tta_flip.map(|f| f == server_flips),
        }),
        n,
        estimated_accuracy,
        feedback_accuracy,
        feedback_count,
        accuracy_gap: estimated_accuracy.zip(feedback_accuracy).map(|(e, f)| e - f),
        output_drift,
        embedding_drift,
        input_drift: serde_json::to_value(input).unwrap_or_default(),
        neither_rate,
        reference_neither_rate,
        neither_p_value,
        drifted,
        reasons,
        config: *config,
    }
}

/// Share of answers feedback called right, and how many had feedback.
fn feedback_accuracy(rows: &[DriftRow]) -> (Option<f64>, usize) {
    let verdicts: Vec<bool> = rows.iter().filter_map(|r| r.correct).collect();
    let right = verdicts.iter().filter(|v| **v).count();
    ((!verdicts.is_empty()).then(|| right as f64 / verdicts.len() as f64), verdicts.len())
}

/// The drift report of `window` for the model served now.
pub async fn compute(state: &AppState, window: DriftWindow, config: DriftConfig) -> Result<DriftReport, ApiError> {
    let model = state.model()?;
    let cap = match window {
        DriftWindow::Last(n) => n,
        DriftWindow::Day(_) => MAX_DAY_ROWS,
    };
    let rows = state.store.drift_window(window, &model.card.version, cap).await?;
    run_report(WindowInfo::of(window, &rows), &model, rows, config).await
}

impl WindowInfo {
    /// The window `rows` were read for (newest first).
    fn of(window: DriftWindow, rows: &[DriftRow]) -> Self {
        let (kind, last, day) = match window {
            DriftWindow::Last(n) => ("last", Some(n), None),
            DriftWindow::Day(d) => ("day", None, Some(d.to_string())),
        };
        Self {
            kind: kind.into(),
            last,
            day,
            from: rows.last().map(|r| r.created_at),
            to: rows.first().map(|r| r.created_at),
        }
    }
}

/// Compares `rows` with `model`'s reference on the blocking pool (CPU work).
async fn run_report(
    info: WindowInfo,
    model: &LoadedModel,
    rows: Vec<DriftRow>,
    config: DriftConfig,
) -> Result<DriftReport, ApiError> {
    let (version, reference, flips) = (model.card.version.clone(), model.reference.clone(), model.tta_flip);
    tokio::task::spawn_blocking(move || report(info, version, reference.as_deref(), flips, &rows, &config))
        .await
        .map_err(|e| ApiError::internal(format!("drift computation failed: {e}")))
}

/// Publishes a report as Prometheus gauges.
fn publish(r: &DriftReport) {
    let set = |name: &'static str, v: Option<f64>| metrics::gauge!(name).set(v.unwrap_or(f64::NAN));
    metrics::gauge!("catsdogs_drift_detected").set(if r.drifted { 1.0 } else { 0.0 });
    set("catsdogs_estimated_accuracy", r.estimated_accuracy);
    set("catsdogs_feedback_accuracy", r.feedback_accuracy);
    set("catsdogs_drift_ks_statistic", r.output_drift.as_ref().map(|o| o.ks));
    set("catsdogs_drift_psi", r.output_drift.as_ref().map(|o| o.psi));
    set("catsdogs_drift_mmd2", r.embedding_drift.mmd2);
    set("catsdogs_neither_rate", r.neither_rate);
    metrics::gauge!("catsdogs_drift_window_predictions").set(r.n as f64);
}

/// The verdict of the last published check (a warning is logged when it turns to drifted).
static DRIFTED: AtomicBool = AtomicBool::new(false);

/// Today's check: gauges, and a warning when the verdict turns to drifted.
pub async fn check_today(state: &AppState) {
    let today = (state.cfg.clock)().date_naive();
    match compute(state, DriftWindow::Day(today), DriftConfig::default()).await {
        Ok(r) => {
            publish(&r);
            let was = DRIFTED.swap(r.drifted, Ordering::Relaxed);
            if r.drifted && !was {
                tracing::warn!(reasons = ?r.reasons, n = r.n, model = %r.model_version, "inputs or answers have drifted from the model's reference");
            } else if !r.drifted && was {
                tracing::info!(n = r.n, "drift cleared");
            }
        }
        Err(e) => tracing::debug!(error = %e.message, "drift check skipped"),
    }
}

/// Drift report of a window of served predictions.
#[utoipa::path(
    get, path = "/api/metrics/drift", tag = "metrics", params(DriftQuery),
    responses(
        (status = 200, description = "The window compared with the model's reference", body = DriftReport),
        (status = 400, description = "`last` outside 1-10,000 (`invalid_window`)", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 503, description = "No model loaded, or the database is unavailable", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn drift_report(
    State(state): State<AppState>,
    query: Result<Query<DriftQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DriftReport>, ApiError> {
    let bad = || ApiError::bad_request("invalid_window", format!("`last` must be a number from 1 to {MAX_LAST}"));
    let Query(q) = query.map_err(|_| bad())?;
    let window = match q.last {
        Some(n) if (1..=MAX_LAST).contains(&n) => DriftWindow::Last(n),
        Some(_) => return Err(bad()),
        None => DriftWindow::Day((state.cfg.clock)().date_naive()),
    };
    let r = compute(&state, window, DriftConfig::default()).await?;
    if matches!(window, DriftWindow::Day(_)) {
        publish(&r);
    }
    Ok(Json(r))
}

/// One day of the dashboard's drift section.
#[derive(Debug, Clone, Serialize)]
pub struct DayDrift {
    pub day: NaiveDate,
    pub n: usize,
    pub estimated_accuracy: Option<f64>,
    pub feedback_accuracy: Option<f64>,
    pub ks_p_value: Option<f64>,
    pub psi: Option<f64>,
    pub mmd_p_value: Option<f64>,
    pub neither_rate: Option<f64>,
    pub drifted: bool,
    pub reasons: Vec<String>,
}

/// Which rows a day's scores come from: count, time span and sum of times (a late row from
/// the outbox or another replica changes them; so does a purge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RowsSeen {
    n: usize,
    oldest: Option<DateTime<Utc>>,
    newest: Option<DateTime<Utc>>,
    time_sum_ms: i64,
}

impl RowsSeen {
    fn of_rows(rows: &[DriftRow]) -> Self {
        Self {
            n: rows.len(),
            oldest: rows.last().map(|r| r.created_at),
            newest: rows.first().map(|r| r.created_at),
            time_sum_ms: rows.iter().map(|r| r.created_at.timestamp_millis()).sum(),
        }
    }

    fn of_summary(s: &DriftWindowSummary) -> Self {
        Self { n: s.n, oldest: s.oldest, newest: s.newest, time_sum_ms: s.time_sum_ms }
    }
}

/// What identifies the scores of a closed day: its rows, the newest erasure anywhere (an
/// erased prediction may leave count and times alike: any erasure recomputes every day),
/// the model and its reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DayKey {
    day: NaiveDate,
    model_version: String,
    /// `created_at` and photo count of the reference (a rebuild changes both).
    reference: Option<(String, usize)>,
    rows: RowsSeen,
    last_erasure_ms: Option<i64>,
}

/// Most predictions of a day the dashboard compares (the newest).
const DAY_ROWS: u32 = 2_000;

/// Most days kept; past it the cache starts again (30 days a page view, a few models).
const DAY_CACHE_CAPACITY: usize = 512;

/// The drift scores of closed days (before today), kept between dashboard views: their
/// predictions no longer change, so the permutation tests need not run again on each view
/// (about 60 ms a busy day: 1-3 s for 30 days). Feedback still arrives for them, so the
/// feedback accuracy is recounted from the rows every time.
#[derive(Default)]
pub struct DayCache {
    days: Mutex<HashMap<DayKey, DayDrift>>,
    hits: AtomicU64,
}

impl DayCache {
    fn get(&self, key: &DayKey) -> Option<DayDrift> {
        let found = self.days.lock().ok()?.get(key).cloned();
        if found.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    fn put(&self, key: DayKey, scores: DayDrift) {
        if let Ok(mut days) = self.days.lock() {
            if days.len() >= DAY_CACHE_CAPACITY {
                days.clear();
            }
            days.insert(key, scores);
        }
    }

    /// Days whose scores are kept.
    pub fn len(&self) -> usize {
        self.days.lock().map_or(0, |d| d.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Page views that reused a day's scores (for tests and curiosity).
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

/// The drift of each of the `days` days up to `today` that had predictions of the served
/// model, newest first (at most 2,000 predictions a day, 400 permutations: the page stays
/// quick, and the smallest p-value, 1/401, is still under the corrected alpha 1/300).
/// Closed days come from [`DayCache`] when their predictions have not changed.
pub async fn per_day(state: &AppState, today: NaiveDate, days: u32) -> Result<Vec<DayDrift>, ApiError> {
    let config = DriftConfig { permutations: 400, max_embeddings: 300, ..DriftConfig::default() };
    // One model for the whole table: a reload during the page does not mix versions.
    let model = state.model()?;
    let reference_id = model.reference.as_ref().map(|r| (r.created_at.clone(), r.count));
    let mut out = Vec::new();
    for back in 0..days {
        let day = today - chrono::Days::new(u64::from(back));
        let key = |rows: RowsSeen, last_erasure_ms: Option<i64>| DayKey {
            day,
            model_version: model.card.version.clone(),
            reference: reference_id.clone(),
            rows,
            last_erasure_ms,
        };
        // Closed days are counted first, not read: unchanged rows keep their scores.
        let seen = if day < today {
            Some(state.store.drift_window_summary(DriftWindow::Day(day), &model.card.version, DAY_ROWS).await?)
        } else {
            None
        };
        if let Some(seen) = &seen {
            if seen.n == 0 {
                continue;
            }
            if let Some(cached) = state.drift_days.get(&key(RowsSeen::of_summary(seen), seen.last_erasure_ms)) {
                out.push(DayDrift { feedback_accuracy: seen.feedback_accuracy(), ..cached });
                continue;
            }
        }
        let rows = state.store.drift_window(DriftWindow::Day(day), &model.card.version, DAY_ROWS).await?;
        if rows.is_empty() {
            continue;
        }
        // Keyed by the rows the scores come from, and the erasure seen before reading them
        // (one since then only makes the next view compute the day again).
        let kept = seen.map(|s| key(RowsSeen::of_rows(&rows), s.last_erasure_ms));
        let (feedback_accuracy, _) = feedback_accuracy(&rows);
        let r = run_report(WindowInfo::of(DriftWindow::Day(day), &rows), &model, rows, config).await?;
        let scores = DayDrift {
            day,
            n: r.n,
            estimated_accuracy: r.estimated_accuracy,
            feedback_accuracy,
            ks_p_value: r.output_drift.as_ref().map(|o| o.p_value),
            psi: r.output_drift.as_ref().map(|o| o.psi),
            mmd_p_value: r.embedding_drift.p_value,
            neither_rate: r.neither_rate,
            drifted: r.drifted,
            reasons: r.reasons,
        };
        if let Some(key) = kept {
            state.drift_days.put(key, scores.clone());
        }
        out.push(scores);
    }
    Ok(out)
}

/// Fewest served predictions a reference may be rebuilt from.
pub const MIN_REFERENCE_WINDOW: u32 = 100;

#[derive(Debug, Deserialize, IntoParams)]
pub struct RebuildQuery {
    /// Rebuild from the last N successful predictions (100 to 10,000).
    pub last: u32,
}

/// What a rebuild wrote.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RebuildReport {
    pub model_version: String,
    /// Predictions summarised (those with stored signals).
    pub count: usize,
    pub source: String,
}

/// Rebuild the served model's drift reference from a window of its own served predictions
/// (after a deliberate change of inputs, e.g. a new camera), then reload the model so the
/// new reference is used. Audited.
#[utoipa::path(
    post, path = "/api/admin/drift/reference", tag = "admin", params(RebuildQuery),
    responses(
        (status = 200, description = "reference.json rewritten and the model reloaded", body = RebuildReport),
        (status = 400, description = "`last` outside 100-10,000, or fewer predictions with signals (`invalid_window`)", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 503, description = "No model loaded, or the database is unavailable", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn rebuild_reference(
    State(state): State<AppState>,
    axum::extract::Extension(caller): axum::extract::Extension<crate::auth::Caller>,
    query: Result<Query<RebuildQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RebuildReport>, ApiError> {
    let bad = |m: String| ApiError::bad_request("invalid_window", m);
    let range = format!("`last` must be a number from {MIN_REFERENCE_WINDOW} to {MAX_LAST}");
    let Query(q) = query.map_err(|_| bad(range.clone()))?;
    if !(MIN_REFERENCE_WINDOW..=MAX_LAST).contains(&q.last) {
        return Err(bad(range));
    }
    let model = state.model()?;
    let rows = state.store.drift_window(DriftWindow::Last(q.last), &model.card.version, q.last).await?;
    let observations: Vec<Observation> = rows.iter().filter(|r| r.signals.is_some()).map(observation).collect();
    if observations.len() < MIN_REFERENCE_WINDOW as usize {
        return Err(bad(format!(
            "only {} recent predictions carry drift signals; at least {MIN_REFERENCE_WINDOW} are needed",
            observations.len()
        )));
    }
    let (from, to) = (rows.last().map(|r| r.created_at), rows.first().map(|r| r.created_at));
    let source = format!(
        "{} served predictions from {} to {}",
        observations.len(),
        from.map(|t| t.to_rfc3339()).unwrap_or_default(),
        to.map(|t| t.to_rfc3339()).unwrap_or_default()
    );
    let version = model.card.version.clone();
    let path = model.dir.join(drift::REFERENCE_FILE);
    let stats = {
        let (version, source) = (version.clone(), source.clone());
        // The rows were answered as the server answers now (with or without the flip).
        let tta_flip = model.tta_flip;
        tokio::task::spawn_blocking(move || ReferenceStats::build(&version, &source, tta_flip, &observations))
            .await
            .map_err(|e| ApiError::internal(format!("reference computation failed: {e}")))?
    };
    let count = stats.count;
    let text = serde_json::to_string(&stats).map_err(|e| ApiError::internal(e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    let written = tokio::fs::write(&tmp, text).await.and(tokio::fs::rename(&tmp, &path).await);
    if let Err(e) = written {
        tracing::error!(error = %e, "cannot write the drift reference");
        return Err(ApiError::internal("cannot write the drift reference next to the model"));
    }
    state
        .store
        .audit((state.cfg.clock)(), &caller.fingerprint, "drift_reference", &format!("rebuilt from {source}"))
        .await?;
    state.reload_model(&caller.fingerprint).await?;
    tracing::info!(count, model = %version, "drift reference rebuilt from served predictions");
    Ok(Json(RebuildReport { model_version: version, count, source }))
}
