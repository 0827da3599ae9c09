//! Daily and windowed service metrics, computed exactly from stored rows.
//!
//! The database does the work ([`crate::Store::daily_metrics`]): counts, sums and
//! nearest-rank percentiles grouped per day in SQL (`percentile_disc` on PostgreSQL, the
//! same rank through window functions on SQLite), so a request reads a few rows per day,
//! not every prediction of the window. [`by_day`] and [`window`] compute the same figures in
//! Rust from rows: the definition the SQL follows, which tests check it against.
//!
//! Definitions (also in the API docs):
//! - `inf_count` = every prediction attempt with a file (success + error);
//! - latency statistics cover successful predictions only; percentiles are nearest-rank
//!   (the smallest value with at least p % of values at or below it);
//! - satisfaction = positive feedback / all feedback; shares = label counts / successes;
//! - a rate with a zero denominator is `null`, never 0;
//! - drift signals: the mean P(dog) of successful predictions and the share of them whose
//!   winning probability is below [`LOW_CONFIDENCE`].
use std::collections::BTreeMap;

use catsdogs_model::Label;
use chrono::NaiveDate;
use serde::Serialize;
use utoipa::ToSchema;

/// A prediction whose winning class has less probability than this counts as low-confidence.
pub const LOW_CONFIDENCE: f64 = 0.8;

/// The fields of a prediction row the metrics need.
#[derive(Debug, Clone)]
pub struct PredictionRow {
    pub day: String,
    pub ok: bool,
    pub label: Option<Label>,
    pub p_dog: Option<f64>,
    pub latency_ms: f64,
}

/// The fields of a feedback row the metrics need.
#[derive(Debug, Clone)]
pub struct FeedbackRow {
    pub day: String,
    pub positive: bool,
}

/// One UTC day. The first ten fields are the seed's, with its names.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DayMetrics {
    /// ISO date (UTC).
    pub day: String,
    pub inf_count: u64,
    pub inf_success: u64,
    pub inf_errors: u64,
    pub inf_latency_avg_ms: Option<f64>,
    pub inf_latency_p50_ms: Option<f64>,
    pub inf_latency_p90_ms: Option<f64>,
    pub inf_latency_p99_ms: Option<f64>,
    pub feedback_pos: u64,
    pub feedback_neg: u64,
    pub inf_latency_p95_ms: Option<f64>,
    /// inf_errors / inf_count.
    pub error_rate: Option<f64>,
    pub feedback_count: u64,
    /// feedback_pos / feedback_count.
    pub satisfaction_rate: Option<f64>,
    pub cat_count: u64,
    pub dog_count: u64,
    /// cat_count / inf_success.
    pub cat_share: Option<f64>,
    /// dog_count / inf_success.
    pub dog_share: Option<f64>,
    /// Mean P(dog) over successful predictions (drift signal).
    pub p_dog_mean: Option<f64>,
    /// Share of successful predictions below [`LOW_CONFIDENCE`] (drift signal).
    pub low_confidence_share: Option<f64>,
}

/// A window of whole UTC days. The first six fields are the seed's `/api/metrics/7d` ones.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct WindowMetrics {
    /// Last day of the window (today, UTC).
    pub as_of: String,
    pub inf_7d: u64,
    pub latency_avg_ms_7d: Option<f64>,
    pub latency_p90_ms_7d: Option<f64>,
    pub fb_pos_7d: u64,
    pub fb_neg_7d: u64,
    /// First day of the window (inclusive); the window is `window_days` calendar days.
    pub window_start: String,
    pub window_end: String,
    pub window_days: u32,
    pub inf_success_7d: u64,
    pub inf_errors_7d: u64,
    pub error_rate_7d: Option<f64>,
    pub latency_p50_ms_7d: Option<f64>,
    pub latency_p99_ms_7d: Option<f64>,
    pub latency_p95_ms_7d: Option<f64>,
    pub feedback_count_7d: u64,
    pub satisfaction_rate_7d: Option<f64>,
    pub cat_share_7d: Option<f64>,
    pub dog_share_7d: Option<f64>,
    pub p_dog_mean_7d: Option<f64>,
    pub low_confidence_share_7d: Option<f64>,
}

/// The latency percentiles reported, in percent.
pub const PERCENTILES: [u32; 4] = [50, 90, 95, 99];

/// What the database adds up for one group of rows (a day, or a whole window).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub count: u64,
    pub success: u64,
    pub cats: u64,
    pub dogs: u64,
    /// Sum of the latencies of successful predictions.
    pub latency_sum: f64,
    /// Sum and count of P(dog) of successful predictions, and how many are low-confidence.
    pub p_dog_sum: f64,
    pub p_dog_n: u64,
    pub low_confidence: u64,
    pub fb_pos: u64,
    pub fb_neg: u64,
    /// Nearest-rank latency percentiles of successful predictions, as [`PERCENTILES`].
    pub latency_percentiles: [Option<f64>; 4],
}

/// `sum / n`; `None` without values. (Databases add in their own order: means may differ
/// from another database's in the last bits; counts and percentiles are exact.)
fn mean(sum: f64, n: u64) -> Option<f64> {
    (n > 0).then(|| sum / n as f64)
}

impl Totals {
    fn avg_latency(&self) -> Option<f64> {
        mean(self.latency_sum, self.success)
    }

    /// (mean P(dog), low-confidence share).
    fn drift(&self) -> (Option<f64>, Option<f64>) {
        (mean(self.p_dog_sum, self.p_dog_n), ratio(self.low_confidence, self.p_dog_n))
    }

    /// The metrics of one day.
    pub fn day(&self, day: &str) -> DayMetrics {
        let [p50, p90, p95, p99] = self.latency_percentiles;
        let (p_dog_mean, low_confidence_share) = self.drift();
        let errors = self.count - self.success;
        DayMetrics {
            day: day.to_string(),
            inf_count: self.count,
            inf_success: self.success,
            inf_errors: errors,
            inf_latency_avg_ms: self.avg_latency(),
            inf_latency_p50_ms: p50,
            inf_latency_p90_ms: p90,
            inf_latency_p99_ms: p99,
            feedback_pos: self.fb_pos,
            feedback_neg: self.fb_neg,
            inf_latency_p95_ms: p95,
            error_rate: ratio(errors, self.count),
            feedback_count: self.fb_pos + self.fb_neg,
            satisfaction_rate: ratio(self.fb_pos, self.fb_pos + self.fb_neg),
            cat_count: self.cats,
            dog_count: self.dogs,
            cat_share: ratio(self.cats, self.success),
            dog_share: ratio(self.dogs, self.success),
            p_dog_mean,
            low_confidence_share,
        }
    }

    /// The metrics of the window `start..=end`.
    pub fn window(&self, start: NaiveDate, end: NaiveDate) -> WindowMetrics {
        let [p50, p90, p95, p99] = self.latency_percentiles;
        let (p_dog_mean, low_confidence_share) = self.drift();
        let errors = self.count - self.success;
        let fmt = |d: NaiveDate| d.format("%Y-%m-%d").to_string();
        WindowMetrics {
            as_of: fmt(end),
            inf_7d: self.count,
            latency_avg_ms_7d: self.avg_latency(),
            latency_p90_ms_7d: p90,
            fb_pos_7d: self.fb_pos,
            fb_neg_7d: self.fb_neg,
            window_start: fmt(start),
            window_end: fmt(end),
            window_days: u32::try_from((end - start).num_days() + 1).unwrap_or(0),
            inf_success_7d: self.success,
            inf_errors_7d: errors,
            error_rate_7d: ratio(errors, self.count),
            latency_p50_ms_7d: p50,
            latency_p99_ms_7d: p99,
            latency_p95_ms_7d: p95,
            feedback_count_7d: self.fb_pos + self.fb_neg,
            satisfaction_rate_7d: ratio(self.fb_pos, self.fb_pos + self.fb_neg),
            cat_share_7d: ratio(self.cats, self.success),
            dog_share_7d: ratio(self.dogs, self.success),
            p_dog_mean_7d: p_dog_mean,
            low_confidence_share_7d: low_confidence_share,
        }
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

#[derive(Default)]
struct Acc {
    count: u64,
    success: u64,
    cats: u64,
    dogs: u64,
    latencies: Vec<f64>,
    p_dog_sum: f64,
    p_dog_n: u64,
    low_confidence: u64,
    fb_pos: u64,
    fb_neg: u64,
}

impl Acc {
    fn add_prediction(&mut self, p: &PredictionRow) {
        self.count += 1;
        if p.ok {
            self.success += 1;
            self.latencies.push(p.latency_ms);
            if let Some(pd) = p.p_dog {
                self.p_dog_sum += pd;
                self.p_dog_n += 1;
                if pd.max(1.0 - pd) < LOW_CONFIDENCE {
                    self.low_confidence += 1;
                }
            }
            match p.label {
                Some(Label::Cat) => self.cats += 1,
                Some(Label::Dog) => self.dogs += 1,
                _ => {}
            }
        }
    }
    fn add_feedback(&mut self, f: &FeedbackRow) {
        if f.positive {
            self.fb_pos += 1;
        } else {
            self.fb_neg += 1;
        }
    }
    fn totals(mut self) -> Totals {
        self.latencies.sort_by(f64::total_cmp);
        Totals {
            count: self.count,
            success: self.success,
            cats: self.cats,
            dogs: self.dogs,
            latency_sum: self.latencies.iter().sum(),
            p_dog_sum: self.p_dog_sum,
            p_dog_n: self.p_dog_n,
            low_confidence: self.low_confidence,
            fb_pos: self.fb_pos,
            fb_neg: self.fb_neg,
            latency_percentiles: PERCENTILES.map(|p| percentile(&self.latencies, f64::from(p))),
        }
    }
}

/// The reference definition: rows grouped per day in Rust, newest first.
pub fn by_day(preds: &[PredictionRow], fbs: &[FeedbackRow]) -> Vec<DayMetrics> {
    let mut days: BTreeMap<&str, Acc> = BTreeMap::new();
    for p in preds {
        days.entry(&p.day).or_default().add_prediction(p);
    }
    for f in fbs {
        days.entry(&f.day).or_default().add_feedback(f);
    }
    days.into_iter().rev().map(|(day, a)| a.totals().day(day)).collect()
}

/// The reference definition: totals over `start..=end` in Rust.
pub fn window(start: NaiveDate, end: NaiveDate, preds: &[PredictionRow], fbs: &[FeedbackRow]) -> WindowMetrics {
    let mut a = Acc::default();
    preds.iter().for_each(|p| a.add_prediction(p));
    fbs.iter().for_each(|f| a.add_feedback(f));
    a.totals().window(start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(5.0));
        assert_eq!(percentile(&v, 90.0), Some(9.0));
        assert_eq!(percentile(&v, 99.0), Some(10.0));
        assert_eq!(percentile(&[7.0], 1.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn groups_by_day_newest_first() {
        let p = |day: &str, ok, label: Option<Label>, p_dog: Option<f64>, ms| PredictionRow {
            day: day.into(),
            ok,
            label,
            p_dog,
            latency_ms: ms,
        };
        let preds = vec![
            p("2026-01-01", true, Some(Label::Cat), Some(0.1), 10.0),
            p("2026-01-02", true, Some(Label::Dog), Some(0.9), 20.0),
            p("2026-01-02", true, Some(Label::Cat), Some(0.3), 40.0),
            p("2026-01-02", false, None, None, 1.0),
        ];
        let fbs = vec![FeedbackRow { day: "2026-01-02".into(), positive: true }];
        let d = by_day(&preds, &fbs);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].day, "2026-01-02");
        assert_eq!((d[0].inf_count, d[0].inf_success, d[0].inf_errors), (3, 2, 1));
        assert_eq!(d[0].inf_latency_avg_ms, Some(30.0));
        assert_eq!(d[0].inf_latency_p50_ms, Some(20.0));
        assert_eq!(d[0].cat_share, Some(0.5));
        assert_eq!(d[0].satisfaction_rate, Some(1.0));
        assert_eq!(d[1].satisfaction_rate, None);
        // Drift: mean P(dog) (0.9 + 0.3) / 2; 0.3 -> winning probability 0.7 < 0.8.
        assert!((d[0].p_dog_mean.expect("mean") - 0.6).abs() < 1e-12);
        assert_eq!(d[0].low_confidence_share, Some(0.5));
        assert_eq!(d[1].low_confidence_share, Some(0.0));
        assert_eq!(d[0].inf_latency_p95_ms, Some(40.0));
    }
}
