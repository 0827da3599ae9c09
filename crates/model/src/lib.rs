//! Everything about the model that does not need a server: one preprocessing path,
//! the candle networks, training, evaluation, plots, the model card and ONNX export.
pub mod card;
pub mod data;
pub mod efficientnet_lite;
pub mod metrics;
pub mod onnx;
pub mod ops;
pub mod optim;
pub mod plots;
pub mod preprocess;
pub mod pth;
pub mod seed_cnn;
pub mod train;
