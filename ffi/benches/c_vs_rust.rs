//! The C ABI's cost at batch 1: `oats_infer` (the exported `extern "C"` entry point, called
//! through a function pointer as a C caller would) against `OatsModel::infer` on the same
//! opened model, timed alternately in one run, printed as a ratio (target ≤ 1.02).
//!
//! `cargo bench -p oats-ffi --bench c_vs_rust [-- EXPORT_DIR [ITERS]]` (default: the
//! pretrained model, 2000 runs; λ 0.2 at the widest width).
use std::time::Instant;

use oats::{oats_close, oats_infer, oats_open, OatsConfig, OatsModel, OatsStatus};
use oats_runtime::{Batch, Options, Selector};

type InferFn = unsafe extern "C" fn(
    *const OatsModel,
    *const f32,
    usize,
    usize,
    usize,
    usize,
    *mut f32,
    usize,
    *mut usize,
    *mut OatsConfig,
) -> OatsStatus;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let dir = args.first().cloned().unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../assets/pretrained/oats-small-fmnist"
        )
        .into()
    });
    let iters: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let rust = oats_runtime::OatsModel::open(&dir, &Options::default()).expect("open");
    let m = rust.manifest().clone();
    let width = m.training.widths.iter().copied().fold(0.0, f64::max);
    rust.select(&Selector::Explicit { lambda: 0.2, width })
        .expect("select");
    let [c, h, w] = m.input.shape;
    let x: Vec<f32> = (0..c * h * w).map(|i| (i % 251) as f32 / 251.0).collect();
    let batch = Batch::new([1, c, h, w], x.clone()).expect("batch");

    let cdir = std::ffi::CString::new(dir.clone()).expect("path");
    let mut handle: *mut OatsModel = std::ptr::null_mut();
    // SAFETY: valid NUL-terminated path, NULL options, writable out pointer.
    let st = unsafe { oats_open(cdir.as_ptr(), std::ptr::null(), &mut handle) };
    assert_eq!(st, OatsStatus::Ok);
    // SAFETY: a live handle, a writable out pointer.
    let st = unsafe { oats::oats_select(handle, 0.2, width, std::ptr::null_mut()) };
    assert_eq!(st, OatsStatus::Ok);
    let infer: InferFn = std::hint::black_box(oats_infer);
    let classes = m.output.classes;
    let mut logits = vec![0f32; classes];
    let mut c_call = || {
        // SAFETY: a live handle; `x` holds c·h·w floats, `logits` `classes` floats.
        let st = unsafe {
            infer(
                handle,
                x.as_ptr(),
                1,
                c,
                h,
                w,
                logits.as_mut_ptr(),
                classes,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        assert_eq!(st, OatsStatus::Ok);
    };
    let rust_call = || {
        std::hint::black_box(rust.infer(&batch).expect("infer"));
    };
    for _ in 0..iters / 10 + 1 {
        c_call();
        rust_call();
    }
    let (mut tc, mut tr) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
    for i in 0..iters {
        // a, b, b, a, …: neither always runs on a cache the other warmed.
        let order: [bool; 2] = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_c in order {
            let t = Instant::now();
            if is_c {
                c_call();
                tc.push(t.elapsed().as_secs_f64() * 1e3);
            } else {
                rust_call();
                tr.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let (pc, pr) = (median(tc), median(tr));
    println!(
        "{dir}: l0.2 width {width}, batch 1, tract, {iters} runs each, alternately: C ABI p50 {pc:.4} ms, Rust API p50 {pr:.4} ms, ratio C/Rust {:.3} (target ≤ 1.02)",
        pc / pr
    );
    // SAFETY: the handle is live and used by nothing else now.
    unsafe { oats_close(handle) };
}
