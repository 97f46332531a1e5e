//! ONNX graphs as data (prost types generated from the vendored `onnx.proto`): the frozen trunk
//! cut out of the dlib descriptor model, its pretrained last block as the branches' starting
//! point, and the export of trunk + three trained branches as one model.

use std::path::Path;

use prost::Message;

use super::TrainError;
use super::net::{BranchWeights, CHANNELS, EMBEDDING_DIM, WINDOW};

/// Protobuf types of `onnx.proto` (ONNX 1.16.2, Apache-2.0), generated at build time.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

use proto::tensor_shape_proto::{Dimension, dimension};
use proto::type_proto;
use proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

/// `TensorProto.DataType.FLOAT`.
const FLOAT: i32 = 1;
/// `TensorProto.DataType.INT64`.
const INT64: i32 = 7;
/// `AttributeProto.AttributeType.INT`.
const ATTR_INT: i32 = 2;
/// `AttributeProto.AttributeType.INTS`.
const ATTR_INTS: i32 = 7;
/// Side of the trunk's output map for a 150×150 chip.
pub const TRUNK_SIDE: usize = 4;
/// Floats in one trunk output map (256×4×4).
pub const TRUNK_LEN: usize = CHANNELS * TRUNK_SIDE * TRUNK_SIDE;
/// Pads that put the block's 1×1 result in the top-left corner of the 2×2 skip path, as
/// dlib's `add_prev` does (begin N,C,H,W then end N,C,H,W).
const CORNER_PADS: [i64; 8] = [0, 0, 0, 0, 0, 0, 1, 1];

/// Reads an ONNX model file.
pub fn read_model(path: &Path) -> Result<ModelProto, TrainError> {
    let bytes = std::fs::read(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    ModelProto::decode(bytes.as_slice()).map_err(|e| TrainError::Model {
        path: path.to_path_buf(),
        reason: format!("not an ONNX model: {e}"),
    })
}

/// Serialises a model.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// The descriptor model split where the trainable branches start.
pub struct DescriptorModel {
    model: ModelProto,
    /// Index of the last trunk node (the producer of the trunk output).
    trunk_end: usize,
    /// Name of the trunk output tensor (N×256×4×4).
    trunk_output: String,
}

impl DescriptorModel {
    /// Finds the last down-sampling block of a dlib-style descriptor graph: the input of its
    /// final stride-2 convolution is the trunk output.
    pub fn split(model: ModelProto, path: &Path) -> Result<Self, TrainError> {
        let unexpected = |reason: &str| TrainError::Model {
            path: path.to_path_buf(),
            reason: format!("not the dlib descriptor graph the trainer expects: {reason}"),
        };
        let nodes = &graph(&model).node;
        let last_strided = nodes
            .iter()
            .rposition(|n| op(n) == "Conv" && ints_attr(n, "strides") == Some(vec![2, 2]))
            .ok_or_else(|| unexpected("no stride-2 convolution"))?;
        let trunk_output = nodes[last_strided]
            .input
            .first()
            .cloned()
            .ok_or_else(|| unexpected("the last stride-2 convolution has no input"))?;
        let trunk_end = nodes
            .iter()
            .position(|n| n.output.contains(&trunk_output))
            .ok_or_else(|| unexpected("the last block's input has no producer"))?;
        Ok(Self {
            model,
            trunk_end,
            trunk_output,
        })
    }

    /// Name of the trunk output tensor.
    pub fn trunk_output(&self) -> &str {
        &self.trunk_output
    }

    /// The trunk alone: nodes up to the trunk output, which becomes the only graph output.
    pub fn trunk(&self) -> ModelProto {
        let mut model = self.model.clone();
        let graph = model.graph.get_or_insert_with(Default::default);
        graph.node.truncate(self.trunk_end + 1);
        keep_used_initializers(graph);
        graph.value_info.clear();
        graph.output = vec![float_value(
            &self.trunk_output,
            &[None, Some(CHANNELS), Some(TRUNK_SIDE), Some(TRUNK_SIDE)],
        )];
        model
    }

    /// The pretrained last block (the starting point of every branch).
    pub fn pretrained_branch(&self, path: &Path) -> Result<BranchWeights, TrainError> {
        let unexpected = |reason: String| TrainError::Model {
            path: path.to_path_buf(),
            reason: format!("unexpected last block: {reason}"),
        };
        let graph = graph(&self.model);
        let block = &graph.node[self.trunk_end + 1..];
        let convs: Vec<&NodeProto> = block.iter().filter(|n| op(n) == "Conv").collect();
        let matmul = block.iter().find(|n| op(n) == "MatMul");
        let (&[first, second], Some(matmul)) = (convs.as_slice(), matmul) else {
            return Err(unexpected(format!(
                "expected two convolutions and a MatMul, found {} convolutions",
                convs.len()
            )));
        };
        let pad = block
            .iter()
            .find(|n| op(n) == "Pad" && n.input.first() == second.output.first());
        if let Some(pad) = pad {
            let name = pad.input.get(1).cloned().unwrap_or_default();
            let pads = int64_values(initializer(graph, &name).ok_or_else(|| {
                unexpected(format!("the residual pads `{name}` are not an initializer"))
            })?);
            if pads != CORNER_PADS {
                return Err(unexpected(format!(
                    "the residual pads are {pads:?}, not {CORNER_PADS:?}"
                )));
            }
        }
        let weights = |node: &NodeProto, i: usize, shape: &[i64]| {
            let name = node.input.get(i).cloned().unwrap_or_default();
            let tensor = initializer(graph, &name)
                .ok_or_else(|| unexpected(format!("`{name}` is not an initializer")))?;
            if tensor.dims != shape {
                return Err(unexpected(format!(
                    "`{name}` has shape {:?}, expected {shape:?}",
                    tensor.dims
                )));
            }
            let values = float_values(tensor);
            let expected = shape.iter().product::<i64>() as usize;
            if tensor.data_type != Some(FLOAT) || values.len() != expected {
                return Err(unexpected(format!(
                    "`{name}` is not {expected} float32 values stored in the file"
                )));
            }
            Ok(values)
        };
        let (c, e, w) = (CHANNELS as i64, EMBEDDING_DIM as i64, WINDOW as i64);
        let second_full = weights(second, 1, &[c, c, w, w])?;
        Ok(BranchWeights {
            w1: weights(first, 1, &[c, c, w, w])?,
            b1: weights(first, 2, &[c])?,
            w2: centre_taps(&second_full),
            b2: weights(second, 2, &[c])?,
            wfc: weights(matmul, 1, &[c, e])?,
        })
    }

    /// The trunk followed by one trained branch per name, each ending in an L2 normalisation
    /// and exposed as the output `emb_<name>` (N×128).
    pub fn export(&self, branches: &[(&str, &BranchWeights)]) -> ModelProto {
        let mut model = self.trunk();
        let graph = model.graph.get_or_insert_with(Default::default);
        graph.output.clear();
        let skip = "trunk_skip_2x2";
        graph.node.push(node(
            "AveragePool",
            &[&self.trunk_output],
            skip,
            vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
        ));
        graph
            .initializer
            .push(int64_tensor("corner_pads", &[8], &CORNER_PADS));
        for (name, weights) in branches {
            append_branch(graph, name, weights, &self.trunk_output, skip);
        }
        model
    }
}

/// Nodes and initializers of one branch: conv 3×3/2 → ReLU → conv 1×1 (the only tap of dlib's
/// 3×3 convolution that touches a 1×1 map) → corner pad + skip → ReLU → global average →
/// projection → L2 normalisation.
fn append_branch(graph: &mut GraphProto, name: &str, w: &BranchWeights, input: &str, skip: &str) {
    let t = |s: &str| format!("{name}/{s}");
    let (c, e, k) = (CHANNELS as i64, EMBEDDING_DIM as i64, WINDOW as i64);
    graph.initializer.extend([
        float_tensor(&t("w1"), &[c, c, k, k], &w.w1),
        float_tensor(&t("b1"), &[c], &w.b1),
        float_tensor(&t("w2"), &[c, c, 1, 1], &w.w2),
        float_tensor(&t("b2"), &[c], &w.b2),
        float_tensor(&t("wfc"), &[c, e], &w.wfc),
    ]);
    let output = format!("emb_{name}");
    graph.node.extend([
        node(
            "Conv",
            &[input, &t("w1"), &t("b1")],
            &t("conv1"),
            vec![
                ints("kernel_shape", &[k, k]),
                ints("strides", &[2, 2]),
                ints("pads", &[0, 0, 0, 0]),
            ],
        ),
        node("Relu", &[&t("conv1")], &t("relu1"), vec![]),
        node(
            "Conv",
            &[&t("relu1"), &t("w2"), &t("b2")],
            &t("conv2"),
            vec![ints("kernel_shape", &[1, 1])],
        ),
        node("Pad", &[&t("conv2"), "corner_pads"], &t("padded"), vec![]),
        node("Add", &[skip, &t("padded")], &t("sum"), vec![]),
        node("Relu", &[&t("sum")], &t("relu2"), vec![]),
        node("GlobalAveragePool", &[&t("relu2")], &t("pool"), vec![]),
        node("Flatten", &[&t("pool")], &t("flat"), vec![int("axis", 1)]),
        node("MatMul", &[&t("flat"), &t("wfc")], &t("raw"), vec![]),
        node(
            "LpNormalization",
            &[&t("raw")],
            &output,
            vec![int("axis", 1), int("p", 2)],
        ),
    ]);
    graph
        .output
        .push(float_value(&output, &[None, Some(EMBEDDING_DIM)]));
}

/// Writes a model atomically (temporary file, then rename).
pub fn write_model(model: &ModelProto, path: &Path) -> Result<(), TrainError> {
    super::write_atomically(path, &encode(model))
}

/// The centre taps `[o][c][1][1]` of a 3×3 convolution's weights `[o][c][3][3]`, as `[o][c]`.
fn centre_taps(weights: &[f32]) -> Vec<f32> {
    let taps = WINDOW * WINDOW;
    weights.chunks(taps).map(|k| k[taps / 2]).collect()
}

fn graph(model: &ModelProto) -> &GraphProto {
    static EMPTY: std::sync::OnceLock<GraphProto> = std::sync::OnceLock::new();
    model
        .graph
        .as_ref()
        .unwrap_or_else(|| EMPTY.get_or_init(GraphProto::default))
}

fn op(node: &NodeProto) -> &str {
    node.op_type.as_deref().unwrap_or("")
}

fn ints_attr(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    node.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .map(|a| a.ints.clone())
}

fn initializer<'a>(graph: &'a GraphProto, name: &str) -> Option<&'a TensorProto> {
    graph
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
}

/// Drops initializers no remaining node reads.
fn keep_used_initializers(graph: &mut GraphProto) {
    let used: std::collections::HashSet<&String> =
        graph.node.iter().flat_map(|n| n.input.iter()).collect();
    let kept: Vec<TensorProto> = graph
        .initializer
        .iter()
        .filter(|t| t.name.as_ref().is_some_and(|n| used.contains(n)))
        .cloned()
        .collect();
    graph.initializer = kept;
}

/// A float tensor's values, from `raw_data` (little-endian) or `float_data`.
fn float_values(tensor: &TensorProto) -> Vec<f32> {
    match &tensor.raw_data {
        Some(raw) if !raw.is_empty() => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        _ => tensor.float_data.clone(),
    }
}

fn int64_values(tensor: &TensorProto) -> Vec<i64> {
    match &tensor.raw_data {
        Some(raw) if !raw.is_empty() => raw
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()))
            .collect(),
        _ => tensor.int64_data.clone(),
    }
}

fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(FLOAT),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn int64_tensor(name: &str, dims: &[i64], values: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(INT64),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn node(op_type: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: Some(op_type.into()),
        name: Some(format!("{output}_node")),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(ATTR_INTS),
        ints: values.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(ATTR_INT),
        i: Some(value),
        ..Default::default()
    }
}

/// A float tensor's value info; `None` dimensions are the symbolic batch `N`.
fn float_value(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => dimension::Value::DimValue(*v as i64),
                None => dimension::Value::DimParam("N".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(FLOAT),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centre_taps_pick_the_middle_of_each_kernel() {
        let weights: Vec<f32> = (0..18).map(|v| v as f32).collect();
        assert_eq!(centre_taps(&weights), vec![4.0, 13.0]);
    }

    #[test]
    fn tensors_round_trip_through_raw_data() {
        let t = float_tensor("x", &[2], &[1.5, -2.0]);
        assert_eq!(float_values(&t), vec![1.5, -2.0]);
        let p = int64_tensor("p", &[8], &CORNER_PADS);
        assert_eq!(int64_values(&p), CORNER_PADS.to_vec());
    }
}
