//! A plain internal graph: nodes in execution order, named values, f32/i64 initializers.
//! Lowering writes this; `onnx.rs` alone turns it into protobuf. Keeping the two apart keeps
//! the folding code testable without ONNX and the ONNX code free of model knowledge.

#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub op: &'static str,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: Vec<(&'static str, Attr)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
    /// Quantized weights and signed zero points ([`crate::quant`]).
    I8(Vec<i8>),
    /// Unsigned activation zero points.
    U8(Vec<u8>),
    /// Quantized biases and their zero points.
    I32(Vec<i32>),
}

impl Data {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::I8(v) => v.len(),
            Data::U8(v) => v.len(),
            Data::I32(v) => v.len(),
        }
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes one element takes in an ONNX file.
    pub fn element_bytes(&self) -> usize {
        match self {
            Data::F32(_) | Data::I32(_) => 4,
            Data::I64(_) => 8,
            Data::I8(_) | Data::U8(_) => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Initializer {
    pub name: String,
    pub dims: Vec<i64>,
    pub data: Data,
}

/// A graph input/output; `None` dims are the dynamic batch dimension "N".
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub int64: bool,
    pub dims: Vec<Option<i64>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    pub name: String,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    pub nodes: Vec<Node>,
    pub initializers: Vec<Initializer>,
    /// Multiply-accumulates of one sample (convolutions and the classifier).
    pub macs: u64,
    /// Counter behind fresh value names (shared with [`crate::quant`], which extends graphs).
    pub(crate) next: usize,
}

impl Graph {
    pub fn new(name: &str) -> Self {
        Graph {
            name: name.to_string(),
            ..Default::default()
        }
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{hint}_{}", self.next)
    }

    pub fn constant_f32(&mut self, hint: &str, dims: Vec<i64>, data: Vec<f32>) -> String {
        let name = self.fresh(hint);
        debug_assert_eq!(dims.iter().product::<i64>() as usize, data.len());
        self.initializers.push(Initializer {
            name: name.clone(),
            dims,
            data: Data::F32(data),
        });
        name
    }

    /// Adds an initializer of any element type and returns its name.
    pub fn constant(&mut self, hint: &str, dims: Vec<i64>, data: Data) -> String {
        let name = self.fresh(hint);
        debug_assert_eq!(dims.iter().product::<i64>() as usize, data.len());
        self.initializers.push(Initializer {
            name: name.clone(),
            dims,
            data,
        });
        name
    }

    pub fn constant_i64(&mut self, hint: &str, dims: Vec<i64>, data: Vec<i64>) -> String {
        let name = self.fresh(hint);
        self.initializers.push(Initializer {
            name: name.clone(),
            dims,
            data: Data::I64(data),
        });
        name
    }

    /// Adds a node with one output and returns the output's name.
    pub fn node(
        &mut self,
        op: &'static str,
        inputs: &[&str],
        attrs: Vec<(&'static str, Attr)>,
    ) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.nodes.push(Node {
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![out.clone()],
            attrs,
        });
        out
    }

    /// Renames the value `from` (the output of the last node) to `to` (e.g. "logits").
    pub fn rename_output(&mut self, from: &str, to: &str) {
        for n in &mut self.nodes {
            for o in n.outputs.iter_mut().chain(n.inputs.iter_mut()) {
                if o == from {
                    *o = to.to_string();
                }
            }
        }
    }

    /// Parameters stored in the graph (all initializer elements).
    pub fn params(&self) -> u64 {
        self.initializers.iter().map(|i| i.data.len() as u64).sum()
    }

    /// Operator types used, sorted and deduplicated (tests check the allowed set).
    pub fn op_types(&self) -> Vec<&'static str> {
        let mut ops: Vec<&'static str> = self.nodes.iter().map(|n| n.op).collect();
        ops.sort_unstable();
        ops.dedup();
        ops
    }
}
