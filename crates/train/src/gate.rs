//! The evaluation gate a candidate model must pass before it is served: not worse than
//! the current model on a fixed evaluation set (within a tolerance), and better on the
//! examples users corrected or confirmed. Both models are scored on the very same photos.
use std::path::Path;

use crate::data;
use catsdogs_model::metrics::Metrics;
use serde::Serialize;

use catsdogs_core::LoadedModel;

use crate::eval::{EvalError, EvalReport, evaluate_samples, select_samples};

/// Both models' metrics on one set.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub candidate: Metrics,
    pub current: Metrics,
}

/// What the gate compared and decided.
#[derive(Debug, Clone, Serialize)]
pub struct GateReport {
    pub candidate_version: String,
    pub current_version: String,
    /// Largest accuracy drop on the fixed set still accepted.
    pub tolerance: f64,
    pub fixed: Comparison,
    /// Absent when no feedback set was given.
    pub feedback: Option<Comparison>,
    pub passed: bool,
    pub reasons: Vec<String>,
}

/// The decision, from the two comparisons: accuracy on the fixed set may drop by at most
/// `tolerance`; on the feedback set the candidate must be more accurate, or as accurate
/// with a lower log loss.
pub fn decide(fixed: &Comparison, feedback: Option<&Comparison>, tolerance: f64) -> (bool, Vec<String>) {
    let mut reasons = Vec::new();
    let drop = fixed.current.accuracy - fixed.candidate.accuracy;
    let fixed_ok = drop <= tolerance;
    reasons.push(format!(
        "fixed set ({} photos): accuracy {:.2} % vs {:.2} % now: {}",
        fixed.candidate.count,
        fixed.candidate.accuracy * 100.0,
        fixed.current.accuracy * 100.0,
        if fixed_ok { "not worse".to_string() } else { format!("worse by {:.2} points", drop * 100.0) }
    ));
    let feedback_ok = match feedback {
        None => {
            reasons.push("no feedback set given: only the fixed set was checked".into());
            true
        }
        Some(f) => {
            let better = f.candidate.accuracy > f.current.accuracy
                || (f.candidate.accuracy == f.current.accuracy && f.candidate.log_loss < f.current.log_loss);
            reasons.push(format!(
                "feedback set ({} photos): accuracy {:.2} % vs {:.2} %, log loss {:.4} vs {:.4}: {}",
                f.candidate.count,
                f.candidate.accuracy * 100.0,
                f.current.accuracy * 100.0,
                f.candidate.log_loss,
                f.current.log_loss,
                if better { "better" } else { "not better" }
            ));
            better
        }
    };
    (fixed_ok && feedback_ok, reasons)
}

/// Both models' predictions on one set of photos, kept for plots.
pub struct Scores {
    pub candidate: EvalReport,
    pub current: EvalReport,
}

impl Scores {
    pub fn comparison(&self) -> Comparison {
        Comparison { candidate: self.candidate.metrics.clone(), current: self.current.metrics.clone() }
    }
}

/// Scores both models on the very same photos.
pub fn score(candidate: &LoadedModel, current: &LoadedModel, samples: Vec<data::Sample>) -> Result<Scores, EvalError> {
    Ok(Scores {
        candidate: evaluate_samples(candidate, samples.clone(), 32)?,
        current: evaluate_samples(current, samples, 32)?,
    })
}

/// A gate decision with the predictions behind it.
pub struct GateRun {
    pub report: GateReport,
    pub fixed: Scores,
    pub feedback: Option<Scores>,
}

/// Scores both models on the fixed set (the current model's validation split of
/// `fixed_dir`, or all of it) and on the feedback folder, and decides.
pub fn run(
    candidate: &LoadedModel,
    current: &LoadedModel,
    fixed_dir: &Path,
    val_split: bool,
    feedback_dir: Option<&Path>,
    tolerance: f64,
) -> Result<GateRun, EvalError> {
    let fixed = score(candidate, current, select_samples(current, fixed_dir, val_split, None)?)?;
    let feedback = match feedback_dir {
        Some(dir) => {
            // Feedback may hold one class only; it must hold something.
            let samples = data::scan_labelled(dir)?;
            if samples.is_empty() {
                return Err(data::DataError::NoClasses(dir.to_path_buf()).into());
            }
            Some(score(candidate, current, samples)?)
        }
        None => None,
    };
    let (fixed_cmp, feedback_cmp) = (fixed.comparison(), feedback.as_ref().map(Scores::comparison));
    let (passed, reasons) = decide(&fixed_cmp, feedback_cmp.as_ref(), tolerance);
    let report = GateReport {
        candidate_version: candidate.card.version.clone(),
        current_version: current.card.version.clone(),
        tolerance,
        fixed: fixed_cmp,
        feedback: feedback_cmp,
        passed,
        reasons,
    };
    Ok(GateRun { report, fixed, feedback })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(accuracy: f64, log_loss: f64) -> Metrics {
        Metrics { count: 100, accuracy, roc_auc: 0.9, log_loss, ece: 0.0, confusion: [[0, 0], [0, 0]] }
    }

    #[test]
    fn worse_on_the_fixed_set_or_not_better_on_feedback_is_refused() {
        let c = |cand, cur| Comparison { candidate: cand, current: cur };
        // Within tolerance on the fixed set, better on feedback: passes.
        assert!(decide(&c(m(0.985, 0.05), m(0.988, 0.04)), Some(&c(m(0.9, 0.2), m(0.8, 0.3))), 0.005).0);
        // Worse than the tolerance on the fixed set: refused whatever the feedback says.
        assert!(!decide(&c(m(0.97, 0.05), m(0.988, 0.04)), Some(&c(m(1.0, 0.1), m(0.5, 0.7))), 0.005).0);
        // Not better on feedback: refused; equal accuracy with a lower log loss counts as better.
        assert!(!decide(&c(m(0.99, 0.05), m(0.99, 0.05)), Some(&c(m(0.8, 0.3), m(0.8, 0.3))), 0.005).0);
        assert!(decide(&c(m(0.99, 0.05), m(0.99, 0.05)), Some(&c(m(0.8, 0.25), m(0.8, 0.3))), 0.005).0);
        // Without a feedback set only the fixed set counts, and the report says so.
        let (ok, reasons) = decide(&c(m(0.99, 0.05), m(0.99, 0.05)), None, 0.0);
        assert!(ok && reasons.iter().any(|r| r.contains("no feedback set")));
    }
}
