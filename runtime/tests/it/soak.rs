//! Concurrency: inferences on many threads while another thread keeps switching
//! configuration. Every answer must be exactly what its configuration computes serially.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use oats_runtime::{Batch, OatsModel, Options, Selector};

const THREADS: usize = 8;
const PER_THREAD: usize = 1000;

fn soak(dir: &std::path::Path) {
    let model =
        Arc::new(OatsModel::open(dir, &Options::default()).unwrap_or_else(|e| panic!("{e}")));
    let ids: Vec<String> = model
        .manifest()
        .graphs
        .iter()
        .map(|g| g.id.clone())
        .collect();
    let x = Arc::new(Batch::new([2, C, H, W], images(2, 99)).unwrap_or_else(|e| panic!("{e}")));
    let serial: Arc<HashMap<String, Vec<f32>>> = Arc::new(
        ids.iter()
            .map(|id| {
                (
                    id.clone(),
                    model
                        .infer_with(id, &x)
                        .map(|p| p.logits)
                        .unwrap_or_else(|e| panic!("{e}")),
                )
            })
            .collect(),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let switches = Arc::new(AtomicUsize::new(0));
    let switcher = {
        let (model, ids, stop, switches) =
            (model.clone(), ids.clone(), stop.clone(), switches.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                model
                    .select(&Selector::Id(ids[i % ids.len()].clone()))
                    .unwrap_or_else(|e| panic!("{e}"));
                switches.fetch_add(1, Ordering::Relaxed);
                i += 1;
                std::thread::yield_now();
            }
        })
    };

    let t0 = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (model, x, serial) = (model.clone(), x.clone(), serial.clone());
            std::thread::spawn(move || {
                let mut seen = HashSet::new();
                for _ in 0..PER_THREAD {
                    let p = model.infer(&x).unwrap_or_else(|e| panic!("{e}"));
                    let want = &serial[&p.config.id];
                    assert_eq!(
                        &p.logits, want,
                        "config {} answered differently than serially",
                        p.config.id
                    );
                    seen.insert(p.config.id.clone());
                }
                seen
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for w in workers {
        seen.extend(w.join().unwrap_or_else(|_| panic!("worker panicked")));
    }
    stop.store(true, Ordering::Relaxed);
    switcher
        .join()
        .unwrap_or_else(|_| panic!("switcher panicked"));

    assert!(
        switches.load(Ordering::Relaxed) > 10,
        "the switcher barely ran"
    );
    assert!(seen.len() > 1, "workers only ever saw {seen:?}");
    assert!(t0.elapsed() < Duration::from_secs(60));
}

#[test]
fn concurrent_inference_while_switching_folded() {
    let dir = tempdir();
    write_folded_export(dir.path());
    soak(dir.path());
}

#[test]
fn concurrent_inference_while_switching_shared_weights() {
    let dir = tempdir();
    write_shared_export(dir.path());
    soak(dir.path());
}
