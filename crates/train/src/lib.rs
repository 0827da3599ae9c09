//! Everything that fits weights: the seed CNN's training loop with its optimiser and
//! weight average, transfer learning of EfficientNet-Lite0 (feature cache, tail tuning),
//! ONNX assembly of trained models, distillation targets, evaluation, the promotion gate,
//! and retraining from feedback. The server never links this crate.
pub mod data;
pub mod distill;
pub mod eval;
pub mod export;
pub mod gate;
pub mod optim;
pub mod plots;
pub mod reference;
pub mod retrain;
pub mod seed_cnn;
pub mod tail_tuning;
pub mod transfer;

pub use eval::{EvalError, EvalReport, evaluate, evaluate_folder, evaluate_samples, select_samples};
pub use export::{ExportError, export_onnx};
