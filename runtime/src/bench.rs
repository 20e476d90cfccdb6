//! Timing for `oats-bench` and for integrators who want their own numbers: latency per graph,
//! switch cost, and (feature `ort`) the overhead of [`OatsModel`] over a bare ONNX Runtime
//! session. Every function returns data and prints nothing. The reference check is in
//! [`crate::reference`].

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::Backend;
use crate::error::{Result, RuntimeError};
use crate::input::{batch_elements, Batch};
use crate::manifest::InputSpec;
use crate::model::OatsModel;
use crate::routed::Carry;
use crate::selection::Selector;

/// Most timed iterations of one measurement ([`BenchConfig::iters`], [`switch_cost`]'s
/// `iters`): every timing is kept for the percentiles (16 bytes each), and a million already
/// resolves p99 to the 10,000th slowest run.
pub const MAX_ITERS: usize = 1_000_000;

fn check_iters(what: &str, iters: usize) -> Result<()> {
    if iters > MAX_ITERS {
        return Err(RuntimeError::invalid_argument(
            what,
            format!("{iters} is more than the limit {MAX_ITERS}"),
        ));
    }
    Ok(())
}

/// How to time a configuration: [`bench_graph`], [`bench_config`], [`derived_vs_folded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchConfig {
    /// Images per inference (latency depends on it; the manifest keys latencies by it).
    pub batch: usize,
    /// Untimed runs first (caches, lazy allocations).
    pub warmup: usize,
    /// Timed runs, at most [`MAX_ITERS`]; 0 times one run.
    pub iters: usize,
}

/// Latency of one graph on one backend at one batch size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchResult {
    /// The configuration timed (its manifest id, or the id of a derived one).
    pub graph_id: String,
    /// The backend it ran on.
    pub backend: Backend,
    /// Images per inference.
    pub batch: usize,
    /// Loading and optimising the graph file (parse + backend preparation), or for a
    /// configuration derived from the package, deriving and loading it.
    pub load_ms: f64,
    /// Untimed runs made first.
    pub warmup: usize,
    /// Timed runs the percentiles are over.
    pub iters: usize,
    /// Median latency of one inference of the whole batch.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Images per second at the median latency.
    pub throughput: f64,
    /// Peak resident memory of the process so far (Linux `VmHWM`), if known.
    pub peak_rss_kib: Option<u64>,
}

/// Time `cfg.iters` inferences of graph `id` on a synthetic batch.
pub fn bench_graph(model: &OatsModel, id: &str, cfg: &BenchConfig) -> Result<BenchResult> {
    bench_config(model, &Selector::Id(id.to_string()), cfg)
}

/// Time `cfg.iters` inferences of the configuration `selector` names (a graph, or one derived
/// from the package) on a synthetic batch. Its load cost is the graph file's, or the time it
/// took to derive. A configuration with side exits is timed as its whole network
/// ([`OatsModel::infer_whole`]): where synthetic images would leave says nothing about real
/// ones; `oats-calibrate` times routed inference on validation images.
pub fn bench_config(
    model: &OatsModel,
    selector: &Selector,
    cfg: &BenchConfig,
) -> Result<BenchResult> {
    check_iters("iters", cfg.iters)?;
    let batch = synthetic_batch(&model.manifest().input, cfg.batch)?;
    let info = model.prepare(selector)?;
    for _ in 0..cfg.warmup {
        model.infer_whole(selector, &batch)?;
    }
    let mut times = Vec::with_capacity(cfg.iters);
    for _ in 0..cfg.iters.max(1) {
        let t = Instant::now();
        model.infer_whole(selector, &batch)?;
        times.push(t.elapsed());
    }
    let (p50, p90, p99) = percentiles_ms(&mut times);
    let load_ms = if info.derived {
        model
            .derived_report()
            .iter()
            .find(|d| d.id == info.id)
            .map_or(0.0, |d| d.derive_ms)
    } else {
        model.load_info(&info.id).map_or(0.0, |l| l.load_ms)
    };
    Ok(BenchResult {
        graph_id: info.id.clone(),
        backend: model.backend(),
        batch: cfg.batch,
        load_ms,
        warmup: cfg.warmup,
        iters: times.len(),
        p50_ms: p50,
        p90_ms: p90,
        p99_ms: p99,
        throughput: if p50 > 0.0 {
            cfg.batch as f64 * 1e3 / p50
        } else {
            0.0
        },
        peak_rss_kib: peak_rss_kib(),
    })
}

/// Cost of [`OatsModel::select`] between two loaded configurations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwitchCost {
    /// One configuration's id.
    pub from: String,
    /// The other's.
    pub to: String,
    /// Timed `select` calls.
    pub iters: usize,
    /// Median time of one `select`.
    pub median_ns: f64,
    /// 99th percentile.
    pub p99_ns: f64,
}

/// Alternates `select(a)` / `select(b)` `iters` times and times each call. The previously
/// active configuration is restored afterwards.
pub fn switch_cost(model: &OatsModel, a: &str, b: &str, iters: usize) -> Result<SwitchCost> {
    check_iters("switch iterations", iters)?;
    let before = model.active();
    let sel = [Selector::Id(a.to_string()), Selector::Id(b.to_string())];
    // Both loaded before timing.
    model.select(&sel[0])?;
    model.select(&sel[1])?;
    let mut times = Vec::with_capacity(iters);
    for i in 0..iters.max(1) {
        let s = &sel[i % 2];
        let t = Instant::now();
        model.select(s)?;
        times.push(t.elapsed());
    }
    model.select(&Selector::Id(before.id.clone()))?;
    let (p50, _, p99) = percentiles_ms(&mut times);
    Ok(SwitchCost {
        from: a.to_string(),
        to: b.to_string(),
        iters: times.len(),
        median_ns: p50 * 1e6,
        p99_ns: p99 * 1e6,
    })
}

/// ONNX Runtime through [`OatsModel`] versus a bare `ort` session on the same graph.
#[cfg(feature = "ort")]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrtOverhead {
    /// The configuration timed.
    pub graph_id: String,
    /// Images per inference (always 1).
    pub batch: usize,
    /// Median latency of the bare session.
    pub bare_p50_ms: f64,
    /// Median latency through [`OatsModel::infer_with`].
    pub model_p50_ms: f64,
    /// `model_p50_ms / bare_p50_ms`; 1.0 means no overhead.
    pub ratio: f64,
}

/// Measures the wrapper's overhead at batch 1. `model` must use an ort backend.
#[cfg(feature = "ort")]
pub fn ort_overhead(
    model: &OatsModel,
    id: &str,
    warmup: usize,
    iters: usize,
) -> Result<OrtOverhead> {
    check_iters("iters", iters)?;
    let m = model.manifest();
    let index = Selector::Id(id.to_string()).resolve(m)?;
    let lambda_index = m.graphs[index].lambda_index.map(i64::from);
    let batch = synthetic_batch(&m.input, 1)?;
    // Same session settings and the same run code as the model's engine (engine/ort.rs), so
    // the difference is what OatsModel adds: resolving the id, checking the batch, the mutex.
    let mut session = model.bare_ort_session(id)?;
    let mut bare = || -> Result<()> {
        let logits = session.run(batch.data(), batch.batch_size(), lambda_index)?;
        std::hint::black_box(logits);
        Ok(())
    };
    let (bare_p50, model_p50) = time_p50_interleaved(warmup, iters, &mut bare, &mut || {
        model.infer_with(id, &batch).map(drop)
    })?;
    Ok(OrtOverhead {
        graph_id: id.to_string(),
        batch: 1,
        bare_p50_ms: bare_p50,
        model_p50_ms: model_p50,
        ratio: if bare_p50 > 0.0 {
            model_p50 / bare_p50
        } else {
            f64::NAN
        },
    })
}

/// p50 of `a` and of `b`, run alternately (a, b, b, a, a, b, …) so that both see the same
/// machine and neither always runs on a cache the other warmed: timed one block after the
/// other, drift between the blocks showed up as ±50 % "overhead" on these 0.05 ms graphs.
fn time_p50_interleaved(
    warmup: usize,
    iters: usize,
    a: &mut dyn FnMut() -> Result<()>,
    b: &mut dyn FnMut() -> Result<()>,
) -> Result<(f64, f64)> {
    let p = time_p50_rounds(warmup, iters, &mut [a, b])?;
    Ok((p[0], p[1]))
}

/// p50 of each of `fs`, run in rounds of one call each whose order rotates from round to
/// round (for two: a, b, then b, a, …), for the reason [`time_p50_interleaved`] gives.
fn time_p50_rounds(
    warmup: usize,
    iters: usize,
    fs: &mut [&mut dyn FnMut() -> Result<()>],
) -> Result<Vec<f64>> {
    let k = fs.len();
    for _ in 0..warmup {
        for f in fs.iter_mut() {
            f()?;
        }
    }
    let mut times: Vec<Vec<Duration>> = (0..k).map(|_| Vec::with_capacity(iters)).collect();
    for i in 0..iters.max(1) {
        for j in 0..k {
            let f = (i + j) % k;
            let t = Instant::now();
            fs[f]()?;
            times[f].push(t.elapsed());
        }
    }
    Ok(times.iter_mut().map(|t| percentiles_ms(t).0).collect())
}

/// What chaining an exit configuration's segments costs, timed in one run: the whole
/// network as one graph, the chain of segments and heads with the features left in the
/// engine (what routed inference does), and the same chain with every part's output copied
/// through the caller's memory. No sample leaves early (every threshold 0), so all three
/// compute the whole network and differ only in how it is cut.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Chaining {
    /// The configuration timed.
    pub graph_id: String,
    /// The engine all three ran in.
    pub backend: Backend,
    /// Images per call.
    pub batch: usize,
    /// Timed calls of each.
    pub iters: usize,
    /// p50 of the whole network as one graph.
    pub whole_p50_ms: f64,
    /// p50 of the chain with the features left in the engine.
    pub chained_p50_ms: f64,
    /// p50 of the chain with every output copied to the caller's memory and back.
    pub through_host_p50_ms: f64,
}

impl Chaining {
    /// `chained / whole`: the cost of cutting the network into parts, the heads' compute
    /// included (every head runs when no sample leaves; 1.0: no cost).
    pub fn chain_ratio(&self) -> f64 {
        self.chained_p50_ms / self.whole_p50_ms
    }

    /// `chained / through_host`: below 1, leaving the features in the engine saves time.
    pub fn in_engine_ratio(&self) -> f64 {
        self.chained_p50_ms / self.through_host_p50_ms
    }
}

/// Times configuration `id` (one with side exits) three ways ([`Chaining`]) in rotating
/// rounds (`time_p50_rounds`) at `cfg.batch`.
pub fn chaining(model: &OatsModel, id: &str, cfg: &BenchConfig) -> Result<Chaining> {
    check_iters("iters", cfg.iters)?;
    let m = model.manifest();
    let g = &m.graphs[Selector::Id(id.to_string()).resolve(m)?];
    let Some(exits) = &g.exits else {
        return Err(RuntimeError::invalid_argument(
            "id",
            format!("{id} has no side exits: there is no chain to time"),
        ));
    };
    let never = vec![0.0; exits.heads.len()];
    let batch = synthetic_batch(&m.input, cfg.batch)?;
    let whole = Selector::Id(id.to_string());
    let p = time_p50_rounds(
        cfg.warmup,
        cfg.iters,
        &mut [
            &mut || model.infer_whole(&whole, &batch).map(drop),
            &mut || {
                model
                    .infer_routed_carry(id, &batch, &never, Carry::InEngine)
                    .map(drop)
            },
            &mut || {
                model
                    .infer_routed_carry(id, &batch, &never, Carry::ThroughHost)
                    .map(drop)
            },
        ],
    )?;
    Ok(Chaining {
        graph_id: id.to_string(),
        backend: model.backend(),
        batch: cfg.batch,
        iters: cfg.iters.max(1),
        whole_p50_ms: p[0],
        chained_p50_ms: p[1],
        through_host_p50_ms: p[2],
    })
}

/// A derived configuration against the graph file of the same (λ, width), timed in one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DerivedVsFolded {
    /// The manifest id of the graph file compared.
    pub graph_id: String,
    /// The backend both ran on.
    pub backend: Backend,
    /// Images per inference.
    pub batch: usize,
    /// Timed runs of each.
    pub iters: usize,
    /// p50 of the exported folded graph file.
    pub folded_p50_ms: f64,
    /// p50 of the same configuration derived from the package.
    pub derived_p50_ms: f64,
    /// `derived_p50_ms / folded_p50_ms`; 1.0: the derived graph is as fast.
    pub ratio: f64,
}

/// Times graph `id` (a file of the manifest) and the same (λ, width) derived from the
/// package, alternately (`time_p50_interleaved`), at `cfg.batch`.
pub fn derived_vs_folded(
    model: &OatsModel,
    id: &str,
    cfg: &BenchConfig,
) -> Result<DerivedVsFolded> {
    check_iters("iters", cfg.iters)?;
    let m = model.manifest();
    let g = &m.graphs[Selector::Id(id.to_string()).resolve(m)?];
    if g.is_derived() {
        return Err(RuntimeError::invalid_argument(
            "id",
            format!(
                "{id} is derived from the package: there is no folded graph file to compare with"
            ),
        ));
    }
    let derived = Selector::Derived {
        lambda: g.lambda,
        width: g.width,
    };
    let batch = synthetic_batch(&m.input, cfg.batch)?;
    // Derived (and cached) before timing.
    model.infer_selected(&derived, &batch)?;
    let (folded, derived) = time_p50_interleaved(
        cfg.warmup,
        cfg.iters,
        &mut || model.infer_with(id, &batch).map(drop),
        &mut || model.infer_selected(&derived, &batch).map(drop),
    )?;
    Ok(DerivedVsFolded {
        graph_id: id.to_string(),
        backend: model.backend(),
        batch: cfg.batch,
        iters: cfg.iters.max(1),
        folded_p50_ms: folded,
        derived_p50_ms: derived,
        ratio: if folded > 0.0 {
            derived / folded
        } else {
            f64::NAN
        },
    })
}

/// An int8 graph against its float configuration, timed alternately in one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Int8VsFloat {
    /// The int8 graph's id.
    pub graph_id: String,
    /// Its float configuration's id (a graph file or derived from the package).
    pub float_id: String,
    /// The engine both ran in.
    pub backend: Backend,
    /// Images per call.
    pub batch: usize,
    /// Timed calls of each.
    pub iters: usize,
    /// p50 of the float configuration.
    pub float_p50_ms: f64,
    /// p50 of the int8 graph.
    pub int8_p50_ms: f64,
    /// `int8_p50_ms / float_p50_ms`; below 1: int8 is faster.
    pub ratio: f64,
}

/// Times int8 graph `id` and its float configuration (`quantization.float_id`) alternately
/// (`time_p50_interleaved`) at `cfg.batch`.
pub fn int8_vs_float(model: &OatsModel, id: &str, cfg: &BenchConfig) -> Result<Int8VsFloat> {
    check_iters("iters", cfg.iters)?;
    let m = model.manifest();
    let g = &m.graphs[Selector::Id(id.to_string()).resolve(m)?];
    let Some(q) = g.quantization.as_ref().filter(|_| g.is_int8()) else {
        return Err(RuntimeError::invalid_argument(
            "id",
            format!("{id} is not an int8 graph"),
        ));
    };
    let float_id = q.float_id.clone();
    let batch = synthetic_batch(&m.input, cfg.batch)?;
    // Loaded (or derived) before timing.
    model.infer_with(&float_id, &batch)?;
    model.infer_with(id, &batch)?;
    let (float, int8) = time_p50_interleaved(
        cfg.warmup,
        cfg.iters,
        &mut || model.infer_with(&float_id, &batch).map(drop),
        &mut || model.infer_with(id, &batch).map(drop),
    )?;
    Ok(Int8VsFloat {
        graph_id: id.to_string(),
        float_id,
        backend: model.backend(),
        batch: cfg.batch,
        iters: cfg.iters.max(1),
        float_p50_ms: float,
        int8_p50_ms: int8,
        ratio: if float > 0.0 { int8 / float } else { f64::NAN },
    })
}

/// Deriving one configuration, what it holds in memory, and switching between two cached
/// derived configurations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeriveCost {
    /// The backend the derived session was loaded into.
    pub backend: Backend,
    /// The configuration derived (`oats_graph::config_id`).
    pub id: String,
    /// Lowering from the package, encoding, checking and loading in the engine (the first
    /// derivation also reads and checks the package: see `package_ms`).
    pub derive_ms: f64,
    /// Reading the package, checking its sha256 and parsing it, with the first derivation
    /// (0 when another derivation had read it already).
    pub package_ms: f64,
    /// The cache's estimate of the session's resident bytes (`oats_runtime::derive`).
    pub estimated_bytes: u64,
    /// Growth of the process's resident set (Linux `VmRSS`) across the derivation, if known:
    /// the session plus what the allocator kept of the lowering's temporaries.
    pub rss_growth_bytes: Option<i64>,
    /// The other cached configuration of the switch measurement.
    pub switch_with: String,
    /// Timed `select` calls.
    pub switch_iters: usize,
    /// Median time of one `select` between the two cached derived configurations.
    pub switch_median_ns: f64,
    /// 99th percentile.
    pub switch_p99_ns: f64,
}

/// Derives (λ, width) (it must not be cached yet for `derive_ms` to mean anything), then
/// times `switch_iters` selects alternating between it and `other` (derived first), both
/// cached. The active configuration is restored afterwards.
pub fn derive_cost(
    model: &OatsModel,
    (lambda, width): (f64, f64),
    other: (f64, f64),
    switch_iters: usize,
) -> Result<DeriveCost> {
    check_iters("switch iterations", switch_iters)?;
    let before = model.active();
    let rss0 = current_rss_kib();
    let t = Instant::now();
    let info = model.select(&Selector::Derived { lambda, width })?;
    let total_ms = t.elapsed().as_secs_f64() * 1e3;
    let rss1 = current_rss_kib();
    let cached = model
        .derived_report()
        .into_iter()
        .find(|d| d.id == info.id)
        .ok_or_else(|| {
            RuntimeError::invalid_argument(
                "cache_bytes",
                format!("{} was not kept in the cache of derived sessions", info.id),
            )
        })?;
    let sel = [
        Selector::Derived { lambda, width },
        Selector::Derived {
            lambda: other.0,
            width: other.1,
        },
    ];
    let other_info = model.select(&sel[1])?;
    model.select(&sel[0])?;
    let mut times = Vec::with_capacity(switch_iters);
    for i in 0..switch_iters.max(1) {
        let t = Instant::now();
        model.select(&sel[(i + 1) % 2])?;
        times.push(t.elapsed());
    }
    let (p50, _, p99) = percentiles_ms(&mut times);
    let restore = if before.derived {
        Selector::Derived {
            lambda: before.lambda,
            width: before.width,
        }
    } else {
        Selector::Id(before.id.clone())
    };
    model.select(&restore)?;
    Ok(DeriveCost {
        backend: model.backend(),
        id: info.id.clone(),
        derive_ms: cached.derive_ms,
        package_ms: (total_ms - cached.derive_ms).max(0.0),
        estimated_bytes: cached.bytes,
        rss_growth_bytes: rss0.zip(rss1).map(|(a, b)| (b as i64 - a as i64) * 1024),
        switch_with: other_info.id.clone(),
        switch_iters: times.len(),
        switch_median_ns: p50 * 1e6,
        switch_p99_ns: p99 * 1e6,
    })
}

/// A deterministic batch of values spread over the model's `value_range` (no RNG dependency,
/// identical across runs and backends). A batch over [`crate::input::MAX_BATCH_ELEMENTS`]
/// values is refused before it is allocated.
pub fn synthetic_batch(spec: &InputSpec, n: usize) -> Result<Batch> {
    let [c, h, w] = spec.shape;
    let [lo, hi] = spec.value_range;
    let len = batch_elements([n, c, h, w])?;
    let mut state: u32 = 0x9E37_79B9;
    let data = (0..len)
        .map(|_| {
            // xorshift32
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            lo + (hi - lo) * (state as f32 / u32::MAX as f32)
        })
        .collect();
    Batch::new([n, c, h, w], data)
}

/// p50, p90, p99 in milliseconds (nearest rank). Sorts `times`.
pub fn percentiles_ms(times: &mut [Duration]) -> (f64, f64, f64) {
    if times.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    times.sort_unstable();
    let at = |q: f64| {
        let i = ((q * (times.len() - 1) as f64).round() as usize).min(times.len() - 1);
        times[i].as_secs_f64() * 1e3
    };
    (at(0.5), at(0.9), at(0.99))
}

/// Peak resident set size of this process in KiB (`VmHWM` in `/proc/self/status`); `None`
/// where that file does not exist.
pub fn peak_rss_kib() -> Option<u64> {
    parse_vm_hwm(&std::fs::read_to_string(Path::new("/proc/self/status")).ok()?)
}

/// Resident set size of this process now in KiB (`VmRSS`); `None` where unknown.
pub fn current_rss_kib() -> Option<u64> {
    parse_status_kib(
        &std::fs::read_to_string(Path::new("/proc/self/status")).ok()?,
        "VmRSS:",
    )
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    parse_status_kib(status, "VmHWM:")
}

fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let mut t: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let (p50, p90, p99) = percentiles_ms(&mut t);
        assert_eq!((p50, p90, p99), (51.0, 90.0, 99.0));
        assert_eq!(percentiles_ms(&mut []), (0.0, 0.0, 0.0));
    }

    #[test]
    fn vm_hwm() {
        assert_eq!(
            parse_vm_hwm("Name:\tx\nVmHWM:\t  12345 kB\nVmRSS: 1 kB\n"),
            Some(12345)
        );
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
        if cfg!(target_os = "linux") {
            assert!(peak_rss_kib().is_some_and(|k| k > 0));
        }
    }

    #[test]
    fn synthetic_batch_is_in_range_and_deterministic() {
        let spec = InputSpec {
            name: "image".into(),
            shape: [1, 4, 4],
            value_range: [-1.0, 1.0],
        };
        let a = synthetic_batch(&spec, 3).ok();
        assert_eq!(a.as_ref().map(|a| a.shape()), Some([3, 1, 4, 4]));
        assert!(a
            .as_ref()
            .is_some_and(|a| a.data().iter().all(|v| (-1.0..=1.0).contains(v))));
        assert_eq!(a, synthetic_batch(&spec, 3).ok());
    }
}
