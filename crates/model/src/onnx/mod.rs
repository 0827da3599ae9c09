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
