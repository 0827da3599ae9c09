//! What training and serving share about the model: one preprocessing path (and the
//! training-time augmentation recorded beside it), the candle networks with their forward
//! passes, the ONNX writing primitives, the model card with its figures, the labels, and
//! the drift statistics that compare served inputs with the reference photos.
pub mod augment;
pub mod card;
pub mod drift;
pub mod efficientnet_lite;
pub mod label;
pub mod metrics;
pub mod onnx;
pub mod ops;
pub mod preprocess;
pub mod pth;
pub mod seed_cnn;
pub mod testing;

pub use card::{Architecture, ArchitectureConfig, ModelCard};
pub use label::Label;
