//! `GET /api/metrics/daily` and `GET /api/metrics/7d`.
//!
//! They need the token: volumes and satisfaction are business data (the seed left them
//! open). Definitions are in `catsdogs_store::metrics`.
use axum::Json;
use axum::extract::State;
use catsdogs_store::{DayMetrics, WindowMetrics};

use crate::error::ApiError;
use crate::state::AppState;

/// Days listed by `/api/metrics/daily`.
pub const DAILY_DAYS: u32 = 30;
/// Calendar days covered by `/api/metrics/7d` (today and the 6 before, UTC).
pub const WINDOW_DAYS: u32 = 7;

/// Per-day metrics, newest first, at most 30 days (days with no activity are omitted).
#[utoipa::path(
    get, path = "/api/metrics/daily", tag = "metrics",
    responses(
        (status = 200, description = "One object per UTC day, newest first", body = [DayMetrics]),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 503, description = "Database unavailable", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn daily(State(state): State<AppState>) -> Result<Json<Vec<DayMetrics>>, ApiError> {
    let today = (state.cfg.clock)().date_naive();
    Ok(Json(state.store.daily_metrics(today, DAILY_DAYS).await?))
}

/// Totals over exactly 7 UTC calendar days: today and the 6 days before.
#[utoipa::path(
    get, path = "/api/metrics/7d", tag = "metrics",
    responses(
        (status = 200, description = "Totals over the window", body = WindowMetrics),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 503, description = "Database unavailable", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn last_7_days(State(state): State<AppState>) -> Result<Json<WindowMetrics>, ApiError> {
    let today = (state.cfg.clock)().date_naive();
    Ok(Json(state.store.window_metrics(today, WINDOW_DAYS).await?))
}
