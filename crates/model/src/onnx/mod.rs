//! A small ONNX graph writer: networks describe themselves as nodes and initializers,
//! this module turns that into a serialized `ModelProto` that ONNX Runtime loads.
pub mod proto;

use std::collections::BTreeMap;

use candle_core::Tensor;
use prost::Message;
use proto::{attribute_type, data_type};

/// Opset the exporter targets (supported by ONNX Runtime >= 1.14).
pub const OPSET: i64 = 17;
/// IR version matching [`OPSET`].
pub const IR_VERSION: i64 = 8;

/// Name of the per-cell logit map output ([`GraphBuilder::logit_map_output`]).
pub const LOGIT_MAP_OUTPUT: &str = "logit_map";
/// Name of the projected-features output ([`GraphBuilder::embedding_output`]).
pub const EMBEDDING_OUTPUT: &str = "embedding";
/// Dimensions of the embedding output.
pub const EMBEDDING_DIMS: usize = 32;
/// Seed of the embedding projection: fixed, so every export of a network projects alike.
const EMBEDDING_SEED: u64 = 0x63_61_74_73_64_6f_67_73; // "catsdogs"

/// The `channels x 32` projection (row-major) of the embedding output: entries +-1/sqrt(32)
/// drawn from a fixed seed (an Achlioptas random projection, which keeps distances between
/// feature vectors up to a small distortion, so drift in the features shows in 32 numbers).
pub fn embedding_projection(channels: usize) -> Vec<f32> {
    let scale = 1.0 / (EMBEDDING_DIMS as f32).sqrt();
    let mut state = EMBEDDING_SEED;
    (0..channels * EMBEDDING_DIMS)
        .map(|_| {
            // splitmix64: a tiny, well-known generator; the projection only needs to be fixed.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            if (z ^ (z >> 31)) & 1 == 0 { scale } else { -scale }
        })
        .collect()
}

/// The serialized model `bytes` with only the graph outputs named in `keep`. ONNX Runtime
/// prunes the nodes no remaining output needs, so this is the graph as exported before the
/// dropped outputs existed (tests of old cards, the benchmark of what the outputs cost).
pub fn keep_outputs(bytes: &[u8], keep: &[&str]) -> Result<Vec<u8>, prost::DecodeError> {
    let mut model = proto::ModelProto::decode(bytes)?;
    if let Some(graph) = model.graph.as_mut() {
        graph.output.retain(|o| keep.contains(&o.name.as_str()));
    }
    Ok(model.encode_to_vec())
}

/// Errors while building a graph.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot read weights for export: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// One node attribute value.
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Str(String),
}

/// A dimension of a graph input or output.
pub enum Dim {
    Fixed(i64),
    Named(&'static str),
}

/// Accumulates nodes, initializers, inputs and outputs.
#[derive(Default)]
pub struct GraphBuilder {
    graph: proto::GraphProto,
    counter: usize,
}

fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> proto::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| proto::Dimension {
            value: Some(match d {
                Dim::Fixed(v) => proto::DimensionValue::DimValue(*v),
                Dim::Named(n) => proto::DimensionValue::DimParam((*n).to_string()),
            }),
        })
        .collect();
    proto::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(proto::TypeProto {
            tensor_type: Some(proto::TypeProtoTensor { elem_type, shape: Some(proto::TensorShapeProto { dim }) }),
        }),
        doc_string: String::new(),
    }
}

impl GraphBuilder {
    /// A graph called `name`.
    pub fn new(name: &str) -> Self {
        let mut b = Self::default();
        b.graph.name = name.to_string();
        b
    }

    /// Declares a `u8` graph input.
    pub fn input_u8(&mut self, name: &str, dims: &[Dim]) {
        self.graph.input.push(value_info(name, data_type::UINT8, dims));
    }

    /// Declares a float graph input.
    pub fn input_f32(&mut self, name: &str, dims: &[Dim]) {
        self.graph.input.push(value_info(name, data_type::FLOAT, dims));
    }

    /// Declares a float graph output.
    pub fn output_f32(&mut self, name: &str, dims: &[Dim]) {
        self.graph.output.push(value_info(name, data_type::FLOAT, dims));
    }

    /// Adds a float initializer from a candle tensor (any layout) and returns its name.
    pub fn weight(&mut self, name: &str, t: &Tensor) -> Result<String, ExportError> {
        let dims = t.dims().iter().map(|&d| d as i64).collect();
        let values = t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        Ok(self.f32_tensor(name, dims, &values))
    }

    /// Adds a float initializer from raw values.
    pub fn f32_tensor(&mut self, name: &str, dims: Vec<i64>, values: &[f32]) -> String {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(proto::TensorProto {
            dims,
            data_type: data_type::FLOAT,
            name: name.to_string(),
            raw_data,
        });
        name.to_string()
    }

    /// Adds an int64 initializer (shapes, axes).
    pub fn i64_tensor(&mut self, name: &str, values: &[i64]) -> String {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(proto::TensorProto {
            dims: vec![values.len() as i64],
            data_type: data_type::INT64,
            name: name.to_string(),
            raw_data,
        });
        name.to_string()
    }

    /// Adds a node; its single output gets a fresh name (returned) unless `output` is given.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>, output: Option<&str>) -> String {
        self.counter += 1;
        let out = output.map(str::to_string).unwrap_or_else(|| format!("{}_{}", op.to_lowercase(), self.counter));
        let attribute = attrs
            .into_iter()
            .map(|(name, a)| {
                let mut p = proto::AttributeProto { name: name.to_string(), ..Default::default() };
                match a {
                    Attr::Int(i) => (p.r#type, p.i) = (attribute_type::INT, i),
                    Attr::Ints(v) => (p.r#type, p.ints) = (attribute_type::INTS, v),
                    Attr::Float(f) => (p.r#type, p.f) = (attribute_type::FLOAT, f),
                    Attr::Str(s) => (p.r#type, p.s) = (attribute_type::STRING, s.into_bytes()),
                }
                p
            })
            .collect();
        self.graph.node.push(proto::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: format!("{op}_{}", self.counter),
            op_type: op.to_string(),
            attribute,
            domain: String::new(),
        });
        out
    }

    /// The cat/dog head both networks end with: `Gemm(x, weight^T, bias)` -> sigmoid ->
    /// the graph output `p_dog` of shape [N].
    pub fn p_dog_head(&mut self, x: &str, weight: &str, bias: &str) {
        let logit = self.node("Gemm", &[x, weight, bias], vec![("transB", Attr::Int(1))], None);
        let p = self.node("Sigmoid", &[&logit], vec![], None);
        let shape = self.i64_tensor("flat_shape", &[-1]);
        self.node("Reshape", &[&p, &shape], vec![], Some("p_dog"));
        self.output_f32("p_dog", &[Dim::Named("N")]);
    }

    /// Output `logit_map` [N, side, side]: the cat/dog head (`weight` [1, C], `bias` [1])
    /// applied to each cell of the final feature map `map` [N, C, side, side]. The head is
    /// linear and the pooling before it is a mean, so the map's mean is the logit of `p_dog`
    /// exactly: a class-activation map in the head's own (calibrated) units.
    pub fn logit_map_output(&mut self, map: &str, weight: &str, bias: &str, channels: usize, side: usize) {
        let conv_shape = self.i64_tensor("logit_map.weight_shape", &[1, channels as i64, 1, 1]);
        let w = self.node("Reshape", &[weight, &conv_shape], vec![], None);
        let y = self.node("Conv", &[map, &w, bias], vec![("kernel_shape", Attr::Ints(vec![1, 1]))], None);
        let side = side as i64;
        let shape = self.i64_tensor("logit_map.shape", &[-1, side, side]);
        self.node("Reshape", &[&y, &shape], vec![], Some(LOGIT_MAP_OUTPUT));
        self.output_f32(LOGIT_MAP_OUTPUT, &[Dim::Named("N"), Dim::Fixed(side), Dim::Fixed(side)]);
    }

    /// Output `embedding` [N, 32]: pooled features [N, C] through the fixed random projection
    /// of [`embedding_projection`], what drift monitoring compares between inputs.
    pub fn embedding_output(&mut self, features: &str, channels: usize) {
        let projection = embedding_projection(channels);
        let p = self.f32_tensor("embedding.projection", vec![channels as i64, EMBEDDING_DIMS as i64], &projection);
        self.node("MatMul", &[features, &p], vec![], Some(EMBEDDING_OUTPUT));
        self.output_f32(EMBEDDING_OUTPUT, &[Dim::Named("N"), Dim::Fixed(EMBEDDING_DIMS as i64)]);
    }

    /// Serializes the model, with `metadata` as ONNX metadata properties.
    pub fn finish(self, metadata: &BTreeMap<String, String>) -> Vec<u8> {
        let model = proto::ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![proto::OperatorSetIdProto { domain: String::new(), version: OPSET }],
            producer_name: "catsdogs".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            domain: String::new(),
            model_version: 1,
            doc_string: String::new(),
            graph: Some(self.graph),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| proto::StringStringEntryProto { key: k.clone(), value: v.clone() })
                .collect(),
        };
        model.encode_to_vec()
    }
}
