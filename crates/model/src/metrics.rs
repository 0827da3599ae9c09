//! Binary-classification metrics on P(dog): accuracy, confusion matrix, ROC AUC, log loss,
//! expected calibration error, and the curves the plots draw.
use serde::{Deserialize, Serialize};

/// Summary of a model on a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub count: usize,
    pub accuracy: f64,
    pub roc_auc: f64,
    pub log_loss: f64,
    /// Expected calibration error over 10 equal-width bins.
    pub ece: f64,
    /// `[[true cat -> cat, true cat -> dog], [true dog -> cat, true dog -> dog]]`.
    pub confusion: [[usize; 2]; 2],
}

/// Computes [`Metrics`] from P(dog) and labels (0 = cat, 1 = dog), threshold 0.5.
pub fn compute(p_dog: &[f32], labels: &[u8]) -> Metrics {
    let n = p_dog.len().min(labels.len());
    let mut confusion = [[0usize; 2]; 2];
    let mut log_loss = 0.0;
    for (&p, &y) in p_dog.iter().zip(labels) {
        let pred = usize::from(p >= 0.5);
        confusion[usize::from(y.min(1))][pred] += 1;
        let p = f64::from(p).clamp(1e-7, 1.0 - 1e-7);
        log_loss -= if y == 1 { p.ln() } else { (1.0 - p).ln() };
    }
    let correct = confusion[0][0] + confusion[1][1];
    let nf = n.max(1) as f64;
    Metrics {
        count: n,
        accuracy: correct as f64 / nf,
        roc_auc: roc_auc(p_dog, labels),
        log_loss: log_loss / nf,
        ece: reliability(p_dog, labels, 10)
            .iter()
            .map(|b| b.count as f64 / nf * (b.mean_confidence - b.accuracy).abs())
            .sum(),
        confusion,
    }
}

/// Area under the ROC curve (Mann-Whitney statistic, ties counted half).
pub fn roc_auc(p_dog: &[f32], labels: &[u8]) -> f64 {
    let mut pairs: Vec<(f32, u8)> = p_dog.iter().copied().zip(labels.iter().copied()).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n_pos = pairs.iter().filter(|p| p.1 == 1).count() as f64;
    let n_neg = pairs.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return f64::NAN;
    }
    // Sum of positive ranks with average ranks for ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j + 1 < pairs.len() && pairs[j + 1].0 == pairs[i].0 {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += pairs[i..=j].iter().filter(|p| p.1 == 1).count() as f64 * avg_rank;
        i = j + 1;
    }
    (rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

/// ROC curve points `(false positive rate, true positive rate)` from threshold 1 down to 0.
pub fn roc_curve(p_dog: &[f32], labels: &[u8]) -> Vec<(f64, f64)> {
    let mut pairs: Vec<(f32, u8)> = p_dog.iter().copied().zip(labels.iter().copied()).collect();
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let n_pos = pairs.iter().filter(|p| p.1 == 1).count().max(1) as f64;
    let n_neg = pairs.iter().filter(|p| p.1 != 1).count().max(1) as f64;
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut points = vec![(0.0, 0.0)];
    for (i, &(p, y)) in pairs.iter().enumerate() {
        if y == 1 {
            tp += 1.0
        } else {
            fp += 1.0
        }
        if i + 1 == pairs.len() || pairs[i + 1].0 != p {
            points.push((fp / n_neg, tp / n_pos));
        }
    }
    points
}

/// One bin of a reliability diagram, on the confidence of the predicted class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    pub mean_confidence: f64,
    pub accuracy: f64,
}

/// Confidence (max(p, 1-p)) binned into `bins` equal-width bins over [0.5, 1].
pub fn reliability(p_dog: &[f32], labels: &[u8], bins: usize) -> Vec<ReliabilityBin> {
    let width = 0.5 / bins as f64;
    let mut acc = vec![(0usize, 0.0f64, 0usize); bins];
    for (&p, &y) in p_dog.iter().zip(labels) {
        let p = f64::from(p);
        let (conf, pred) = if p >= 0.5 { (p, 1) } else { (1.0 - p, 0) };
        let b = (((conf - 0.5) / width) as usize).min(bins - 1);
        acc[b].0 += 1;
        acc[b].1 += conf;
        acc[b].2 += usize::from(pred == y);
    }
    acc.into_iter()
        .enumerate()
        .map(|(i, (count, conf_sum, correct))| ReliabilityBin {
            lower: 0.5 + i as f64 * width,
            upper: 0.5 + (i + 1) as f64 * width,
            count,
            mean_confidence: if count > 0 { conf_sum / count as f64 } else { 0.0 },
            accuracy: if count > 0 { correct as f64 / count as f64 } else { 0.0 },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let p = [0.9, 0.8, 0.3, 0.6, 0.1, 0.4];
        let y = [1, 1, 0, 0, 0, 1];
        let m = compute(&p, &y);
        assert_eq!(m.confusion, [[2, 1], [1, 2]]);
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-12);
        // Positive scores 0.9, 0.8, 0.4 vs negatives 0.3, 0.6, 0.1: 8 of 9 pairs ordered.
        assert!((m.roc_auc - 8.0 / 9.0).abs() < 1e-12);
        let expected_ll = -[0.9f64, 0.8, 0.7, 0.4, 0.9, 0.4].iter().map(|p| p.ln()).sum::<f64>() / 6.0;
        assert!((m.log_loss - expected_ll).abs() < 1e-6);
        let roc = roc_curve(&p, &y);
        assert_eq!(roc.first(), Some(&(0.0, 0.0)));
        assert_eq!(roc.last(), Some(&(1.0, 1.0)));
    }

    #[test]
    fn perfectly_calibrated_bins_have_zero_ece() {
        // 10 predictions at 0.8 of which 8 are dogs: confidence 0.8, accuracy 0.8.
        let p = [0.8f32; 10];
        let y = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0];
        assert!(compute(&p, &y).ece < 1e-6);
    }
}
