//! int8 configurations in ONNX QDQ form (issue #15): a folded float graph of
//! [`crate::lower`] becomes its quantized twin, which both engines run.
//!
//! * Weights of every Conv and Gemm: int8, symmetric, per output channel (scale
//!   s_c = max|W_c| / 127, zero point 0), behind a DequantizeLinear on axis 0.
//! * Biases: int32 at scale s_x·s_c, zero point 0, which is what integer kernels accumulate
//!   in (s_x is the scale of the layer's input).
//! * Activations: every float value a Conv, Gemm or Add reads (the image included) passes a
//!   QuantizeLinear → DequantizeLinear pair with one per-tensor uint8 scale and zero point,
//!   from the range [min, max] seen on calibration images ([`ActQuant::from_range`]). The
//!   range always holds 0, so zero is exact and a post-ReLU value has zero point 0.
//!
//! uint8 activations with int8 weights is ONNX Runtime's preferred form on x86; it fuses
//! DequantizeLinear → Conv → QuantizeLinear into integer kernels. tract folds the constant
//! DequantizeLinears into float weights. The graph is the single statement of the int8
//! model: the exporter verifies it, the calibrator attacks it (interpreting these same nodes
//! with straight-through gradients) and devices run it.
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::error::{Error, Result};
use crate::graph::{Attr, Data, Graph, Initializer};

/// Largest int8 weight magnitude: symmetric quantization uses [-127, 127], so negating a
/// quantized weight (a negative per-channel affine) is exact.
pub const WEIGHT_QMAX: f32 = 127.0;

/// Operators whose float inputs get an activation quantizer.
const QUANTIZED_INPUT_OPS: &[&str] = &["Conv", "Gemm", "Add"];

/// The range of one activation seen on the calibration images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub min: f32,
    pub max: f32,
}

impl Range {
    /// The empty range, to be widened with [`Range::include`].
    pub fn empty() -> Range {
        Range {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
        }
    }

    /// Widens the range to hold `min..=max`.
    pub fn include(&mut self, min: f32, max: f32) {
        self.min = self.min.min(min);
        self.max = self.max.max(max);
    }
}

/// Value name → calibrated range, for every value of [`activation_points`].
pub type Ranges = BTreeMap<String, Range>;

/// A per-tensor uint8 activation quantizer: q = clamp(round(x / scale) + zero_point, 0, 255).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActQuant {
    pub scale: f32,
    pub zero_point: u8,
}

impl ActQuant {
    /// The quantizer of `r` widened to hold 0: scale (max − min) / 255. A range that is a
    /// single point (a value that is always 0) gets scale 1. A non-finite bound is an error
    /// (`what` names the value): calibration images that produce NaN have no int8 model.
    pub fn from_range(r: &Range, what: &str) -> Result<ActQuant> {
        if !(r.min.is_finite() && r.max.is_finite()) {
            return Err(Error::Request(format!(
                "activation {what:?} has the range [{}, {}] on the calibration images; \
                 int8 needs a finite one",
                r.min, r.max
            )));
        }
        let (lo, hi) = (r.min.min(0.0), r.max.max(0.0));
        let scale = (hi - lo) / 255.0;
        if !(scale.is_normal()) {
            return Ok(ActQuant {
                scale: 1.0,
                zero_point: 0,
            });
        }
        let zero_point = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        Ok(ActQuant { scale, zero_point })
    }
}

/// The float values of `g` that get an activation quantizer: the non-constant inputs of every
/// Conv and Gemm (input 0) and Add (both), in the order they are first read.
pub fn activation_points(g: &Graph) -> Vec<String> {
    let consts: HashSet<&str> = g.initializers.iter().map(|i| i.name.as_str()).collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for n in &g.nodes {
        let reads: &[String] = match n.op {
            "Conv" | "Gemm" => &n.inputs[..1.min(n.inputs.len())],
            op if QUANTIZED_INPUT_OPS.contains(&op) => &n.inputs,
            _ => &[],
        };
        for v in reads {
            if !consts.contains(v.as_str()) && seen.insert(v.clone()) {
                out.push(v.clone());
            }
        }
    }
    out
}

/// Largest |int32 bias| written: 2^30 leaves the integer accumulator headroom.
const BIAS_QMAX: f32 = (1u32 << 30) as f32;

/// Per-output-channel symmetric int8 of a weight whose first dimension is the output
/// channels: (quantized values, scale per channel). A channel's scale is at least its
/// `min_scales` entry (when given): a near-dead channel with a real bias needs a scale that
/// keeps its int32 bias in range, and its weights, tiny next to that scale, round to ~0.
pub fn quantize_weight(
    w: &[f32],
    out_channels: usize,
    min_scales: Option<&[f32]>,
) -> Result<(Vec<i8>, Vec<f32>)> {
    if out_channels == 0 || !w.len().is_multiple_of(out_channels) {
        return Err(Error::Request(format!(
            "a weight of {} values does not split into {out_channels} output channels",
            w.len()
        )));
    }
    let per = w.len() / out_channels;
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(out_channels);
    for (c, ch) in w.chunks_exact(per).enumerate() {
        let m = ch.iter().fold(0f32, |a, v| a.max(v.abs()));
        if !ch.iter().all(|v| v.is_finite()) {
            return Err(Error::Request("a weight to quantize is not finite".into()));
        }
        let floor = min_scales.and_then(|f| f.get(c)).copied().unwrap_or(0.0);
        let s = (m / WEIGHT_QMAX).max(floor);
        let s = if s.is_normal() { s } else { 1.0 };
        q.extend(
            ch.iter()
                .map(|v| (v / s).round_ties_even().clamp(-WEIGHT_QMAX, WEIGHT_QMAX) as i8),
        );
        scales.push(s);
    }
    Ok((q, scales))
}

/// The int8 twin of the folded float graph `g` (module docs), with activation ranges
/// `ranges` for every value of [`activation_points`]`(g)`.
pub fn quantize(g: &Graph, ranges: &Ranges) -> Result<Graph> {
    if let Some(n) = g.nodes.iter().find(|n| n.op == "Gather") {
        return Err(Error::Request(format!(
            "int8 graphs are made from folded graphs; {:?} reads a λ table",
            n.outputs.first()
        )));
    }
    let inits: HashMap<&str, &Initializer> = g
        .initializers
        .iter()
        .map(|i| (i.name.as_str(), i))
        .collect();
    let mut q = Graph {
        name: g.name.clone(),
        inputs: g.inputs.clone(),
        outputs: g.outputs.clone(),
        nodes: Vec::new(),
        initializers: g.initializers.clone(),
        macs: g.macs,
        next: g.next,
    };
    // Value → (its dequantized twin, the activation scale).
    let mut dq: HashMap<String, (String, f32)> = HashMap::new();
    let points: HashSet<String> = activation_points(g).into_iter().collect();
    for i in &g.inputs {
        quantize_value(&mut q, &mut dq, &points, ranges, &i.name)?;
    }
    for n in &g.nodes {
        let mut node = n.clone();
        for v in node.inputs.iter_mut() {
            if let Some((d, _)) = dq.get(v.as_str()) {
                *v = d.clone();
            }
        }
        if matches!(n.op, "Conv" | "Gemm") {
            let s_x = dq
                .get(n.inputs[0].as_str())
                .map(|(_, s)| *s)
                .ok_or_else(|| {
                    Error::Request(format!("the input of {:?} is not quantized", n.outputs))
                })?;
            let w = n
                .inputs
                .get(1)
                .and_then(|w| inits.get(w.as_str()))
                .ok_or_else(|| Error::Request(format!("{:?} has no constant weight", n.outputs)))?;
            let (Data::F32(wv), Some(&o)) = (&w.data, w.dims.first()) else {
                return Err(Error::Request(format!("weight {:?} is not float", w.name)));
            };
            let bias = n.inputs.get(2).and_then(|b| inits.get(b.as_str()));
            let floors: Option<Vec<f32>> = match bias.map(|b| &b.data) {
                Some(Data::F32(bv)) => {
                    Some(bv.iter().map(|b| b.abs() / (s_x * BIAS_QMAX)).collect())
                }
                _ => None,
            };
            let (wq, ws) = quantize_weight(wv, o as usize, floors.as_deref())?;
            let axis0 = vec![("axis", Attr::Int(0))];
            let wq = q.constant("w_int8", w.dims.clone(), Data::I8(wq));
            let wsn = q.constant("w_scale", vec![o], Data::F32(ws.clone()));
            let wz = q.constant("w_zero_point", vec![o], Data::I8(vec![0; o as usize]));
            node.inputs[1] = q.node("DequantizeLinear", &[&wq, &wsn, &wz], axis0.clone());
            if let Some(b) = bias {
                let Data::F32(bv) = &b.data else {
                    return Err(Error::Request(format!("bias {:?} is not float", b.name)));
                };
                let bs: Vec<f32> = ws.iter().map(|s| s * s_x).collect();
                let bq = bv
                    .iter()
                    .zip(&bs)
                    .map(|(v, s)| {
                        let r = (v / s).round_ties_even();
                        (r.is_finite() && r.abs() < i32::MAX as f32)
                            .then_some(r as i32)
                            .ok_or_else(|| {
                                Error::Request(format!(
                                    "bias {:?} does not fit int32 at scale {s}",
                                    b.name
                                ))
                            })
                    })
                    .collect::<Result<Vec<i32>>>()?;
                let bqn = q.constant("b_int32", b.dims.clone(), Data::I32(bq));
                let bsn = q.constant("b_scale", vec![o], Data::F32(bs));
                let bz = q.constant("b_zero_point", vec![o], Data::I32(vec![0; o as usize]));
                node.inputs[2] = q.node("DequantizeLinear", &[&bqn, &bsn, &bz], axis0);
            }
        }
        let outs = node.outputs.clone();
        q.nodes.push(node);
        for o in &outs {
            quantize_value(&mut q, &mut dq, &points, ranges, o)?;
        }
    }
    // The float weights and biases the int8 ones replaced.
    let used: HashSet<&str> = q
        .nodes
        .iter()
        .flat_map(|n| n.inputs.iter().map(String::as_str))
        .collect();
    let keep: Vec<Initializer> = q
        .initializers
        .iter()
        .filter(|i| used.contains(i.name.as_str()))
        .cloned()
        .collect();
    q.initializers = keep;
    Ok(q)
}

/// Adds the QuantizeLinear → DequantizeLinear pair of `v` when it is an activation point.
fn quantize_value(
    q: &mut Graph,
    dq: &mut HashMap<String, (String, f32)>,
    points: &HashSet<String>,
    ranges: &Ranges,
    v: &str,
) -> Result<()> {
    if !points.contains(v) {
        return Ok(());
    }
    let r = ranges
        .get(v)
        .ok_or_else(|| Error::Request(format!("no calibrated range for activation {v:?}")))?;
    let a = ActQuant::from_range(r, v)?;
    let s = q.constant("a_scale", vec![], Data::F32(vec![a.scale]));
    let z = q.constant("a_zero_point", vec![], Data::U8(vec![a.zero_point]));
    let qv = q.node("QuantizeLinear", &[v, &s, &z], vec![]);
    let dv = q.node("DequantizeLinear", &[&qv, &s, &z], vec![]);
    dq.insert(v.to_string(), (dv, a.scale));
    Ok(())
}

/// `ranges` as the ordered list a manifest stores: [min, max] per value of
/// [`activation_points`]`(g)`, in that order.
pub fn range_list(g: &Graph, ranges: &Ranges) -> Result<Vec<[f32; 2]>> {
    activation_points(g)
        .iter()
        .map(|p| {
            ranges
                .get(p)
                .map(|r| [r.min, r.max])
                .ok_or_else(|| Error::Request(format!("no calibrated range for activation {p:?}")))
        })
        .collect()
}

/// The int8 configuration (λ, width) of `pkg` with the activation ranges `list` (as
/// [`range_list`] stores them): the folded graph lowered from the package, then
/// [`quantize`]d. This is how a device derives an int8 configuration without a file, and it
/// is the same arithmetic that wrote the exporter's int8 files: the same bytes.
///
/// Per output channel, symmetric quantization of a folded weight a_c·W_c gives
/// sign(a_c)·q_c at scale |a_c|·s_c, where (q_c, s_c) quantize the unfolded W_c: the
/// per-channel scales absorb the affine of any λ, so the package's float weights and a few
/// ranges per configuration are all an int8 configuration costs.
pub fn lower_int8(
    pkg: &crate::Package,
    lambda: f64,
    width: f64,
    list: &[[f32; 2]],
) -> Result<Graph> {
    let g = pkg.lower_folded(lambda, width)?;
    let points = activation_points(&g);
    if points.len() != list.len() {
        return Err(Error::Request(format!(
            "{} activation ranges for a graph that quantizes {} values",
            list.len(),
            points.len()
        )));
    }
    let ranges: Ranges = points
        .into_iter()
        .zip(list)
        .map(|(p, &[min, max])| (p, Range { min, max }))
        .collect();
    quantize(&g, &ranges)
}

/// Whether `g` is an int8 graph (holds QuantizeLinear nodes).
pub fn is_int8(g: &Graph) -> bool {
    g.nodes.iter().any(|n| n.op == "QuantizeLinear")
}

/// Bytes the initializers of `g` take in an ONNX file (the storage a graph costs).
pub fn initializer_bytes(g: &Graph) -> u64 {
    g.initializers
        .iter()
        .map(|i| (i.data.len() * i.data.element_bytes()) as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_quantizer_holds_zero_and_the_range() {
        let a = ActQuant::from_range(
            &Range {
                min: 0.0,
                max: 2.55,
            },
            "x",
        )
        .unwrap();
        assert_eq!(a.zero_point, 0);
        assert!((a.scale - 0.01).abs() < 1e-7);
        let a = ActQuant::from_range(
            &Range {
                min: -1.0,
                max: 1.55,
            },
            "x",
        )
        .unwrap();
        assert_eq!(a.zero_point, 100);
        let a = ActQuant::from_range(&Range { min: 0.5, max: 0.5 }, "x").unwrap();
        assert_eq!(a.zero_point, 0, "widened to hold 0");
        let a = ActQuant::from_range(&Range { min: 0.0, max: 0.0 }, "x").unwrap();
        assert_eq!((a.scale, a.zero_point), (1.0, 0));
        let e = ActQuant::from_range(
            &Range {
                min: 0.0,
                max: f32::NAN,
            },
            "relu_3",
        )
        .unwrap_err();
        assert!(e.to_string().contains("relu_3"), "{e}");
        assert!(ActQuant::from_range(&Range::empty(), "x").is_err());
    }

    /// The identity behind deriving int8 configurations from the package: quantizing a
    /// channel scaled by a (the folded affine) gives the sign-flipped values at scale |a|·s.
    #[test]
    fn per_channel_scales_absorb_the_affine() {
        let w: Vec<f32> = (0..24)
            .map(|i| ((i * 37 % 23) as f32 - 11.3) / 7.0)
            .collect();
        let a = [0.37f32, -2.5, 1.0];
        let (q, s) = quantize_weight(&w, 3, None).unwrap();
        let folded: Vec<f32> = w.iter().enumerate().map(|(i, v)| v * a[i / 8]).collect();
        let (qf, sf) = quantize_weight(&folded, 3, None).unwrap();
        for c in 0..3 {
            assert!(
                (sf[c] - a[c].abs() * s[c]).abs() <= 1e-6 * sf[c],
                "scale {c}"
            );
            for k in 0..8 {
                let want = if a[c] < 0.0 {
                    -q[c * 8 + k]
                } else {
                    q[c * 8 + k]
                };
                assert_eq!(qf[c * 8 + k], want, "channel {c} value {k}");
            }
        }
    }

    #[test]
    fn weights_are_symmetric_per_channel() {
        let w = [1.0, -0.5, 0.25, 0.0, 0.0, 0.0, -4.0, 2.0, 1.0];
        let (q, s) = quantize_weight(&w, 3, None).unwrap();
        assert_eq!(&q[..3], &[127, -64, 32]);
        assert_eq!(&q[3..6], &[0, 0, 0]);
        assert_eq!(s[1], 1.0, "an all-zero channel keeps a usable scale");
        assert_eq!(&q[6..], &[-127, 64, 32]);
        assert!((s[2] - 4.0 / 127.0).abs() < 1e-7);
        assert!(quantize_weight(&w, 2, None).is_err());
        let (_, s) = quantize_weight(&w, 3, Some(&[0.0, 0.0, 1.0])).unwrap();
        assert_eq!(s[2], 1.0, "a scale floor wins over a smaller max");
        assert!(quantize_weight(&[f32::NAN, 1.0], 1, None).is_err());
    }
}
