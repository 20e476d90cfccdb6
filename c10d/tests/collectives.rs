//! The collectives on gloo over loopback, two ranks as two threads of this process (c10d
//! groups are independent objects; gloo talks TCP between them as between processes).
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use oats_c10d::{GlooDevice, ProcessGroup, ReduceOp, Store};
use tch::{Kind, Tensor};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn group(port: u16, rank: usize, world: usize, timeout: Duration) -> (Store, ProcessGroup) {
    let store = Store::tcp("127.0.0.1", port, world, rank == 0, timeout).expect("store");
    let pg = ProcessGroup::gloo(
        &store,
        rank,
        world,
        timeout,
        &GlooDevice::Host("127.0.0.1".into()),
    )
    .expect("group");
    (store, pg)
}

/// Runs `f(rank, store, group)` on `world` threads; returns their results in rank order.
fn ranks<T: Send + 'static>(
    world: usize,
    timeout: Duration,
    f: fn(usize, &Store, &ProcessGroup) -> T,
) -> Vec<T> {
    let port = free_port();
    let hs: Vec<_> = (0..world)
        .map(|r| {
            thread::spawn(move || {
                let (s, g) = group(port, r, world, timeout);
                f(r, &s, &g)
            })
        })
        .collect();
    hs.into_iter()
        .map(|h| h.join().expect("rank thread"))
        .collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).expect("f32 values")
}

#[test]
fn all_reduce_broadcast_barrier_and_store_are_correct() {
    let out = ranks(3, Duration::from_secs(30), |r, store, pg| {
        assert_eq!((pg.rank(), pg.world(), pg.backend()), (r, 3, "gloo"));
        let base = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 4.0]);
        let mut sum = &base * (r as f64 + 1.0);
        pg.all_reduce(&mut sum, ReduceOp::Sum).expect("sum");
        let mut max = Tensor::from_slice(&[r as f32, -(r as f32)]);
        pg.all_reduce(&mut max, ReduceOp::Max).expect("max");
        let mut min = Tensor::from_slice(&[r as f32, -(r as f32)]);
        pg.all_reduce(&mut min, ReduceOp::Min).expect("min");
        // Broadcast from a non-zero root, of a 2-D tensor and of integers.
        let mut b = Tensor::full([2, 3], r as f64 * 10.0, (Kind::Float, tch::Device::Cpu));
        pg.broadcast(&mut b, 2).expect("broadcast");
        let mut bi = Tensor::from_slice(&[r as i64 * 7 + 1]);
        pg.broadcast(&mut bi, 1).expect("broadcast i64");
        if r == 1 {
            store.set("hello", b"from rank 1").expect("set");
        }
        let got = store.get("hello").expect("get");
        pg.barrier().expect("barrier");
        (
            values(&sum),
            values(&max),
            values(&min),
            values(&b),
            i64::try_from(&bi).expect("i64"),
            got,
        )
    });
    for (sum, max, min, b, bi, got) in out {
        assert_eq!(sum, vec![6.0, -12.0, 3.0, 24.0]);
        assert_eq!(max, vec![2.0, 0.0]);
        assert_eq!(min, vec![0.0, -2.0]);
        assert_eq!(b, vec![20.0; 6]);
        assert_eq!(bi, 8);
        assert_eq!(got, b"from rank 1");
    }
}

#[test]
fn bad_tensors_and_ranks_are_refused_before_c10d() {
    let out = ranks(1, Duration::from_secs(30), |_, _, pg| {
        let mut t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0])
            .view([2, 2])
            .tr();
        let strided = pg
            .all_reduce(&mut t, ReduceOp::Sum)
            .map_err(|e| e.to_string());
        let mut ok = Tensor::from_slice(&[1.0f32]);
        let root = pg.broadcast(&mut ok, 3).map_err(|e| e.to_string());
        pg.all_reduce(&mut ok, ReduceOp::Sum).expect("world of one");
        (strided, root, values(&ok))
    });
    let (strided, root, one) = &out[0];
    assert!(
        strided
            .as_ref()
            .is_err_and(|e| e.contains("not contiguous")),
        "{strided:?}"
    );
    assert!(
        root.as_ref()
            .is_err_and(|e| e.contains("rank 3 of world size 1")),
        "{root:?}"
    );
    assert_eq!(one, &vec![1.0]);
}

/// A peer that is gone makes the next collective fail, well before the timeout; a peer that
/// is alive but never joins the collective makes it fail after the timeout. Nothing hangs.
#[test]
fn a_dead_or_silent_peer_is_an_error_not_a_hang() {
    let timeout = Duration::from_secs(3);
    let port = free_port();
    let peer = thread::spawn(move || {
        let (s, g) = group(port, 1, 2, timeout);
        let mut t = Tensor::from_slice(&[1.0f32]);
        g.all_reduce(&mut t, ReduceOp::Sum)
            .expect("first all-reduce");
        // Silent: alive, but skips the second collective.
        thread::sleep(timeout * 3);
        drop((g, s));
    });
    let (_s, g) = group(port, 0, 2, timeout);
    let mut t = Tensor::from_slice(&[1.0f32]);
    g.all_reduce(&mut t, ReduceOp::Sum)
        .expect("first all-reduce");
    assert_eq!(values(&t), vec![2.0]);
    let start = Instant::now();
    let err = g
        .all_reduce(&mut t, ReduceOp::Sum)
        .expect_err("silent peer");
    let waited = start.elapsed();
    assert!(
        waited >= timeout / 2 && waited < timeout * 3,
        "{waited:?}: {err}"
    );
    assert!(err.to_string().starts_with("c10d all-reduce: "), "{err}");
    peer.join().expect("peer");
}

#[test]
fn a_missing_store_server_times_out() {
    let start = Instant::now();
    let err = Store::tcp("127.0.0.1", free_port(), 2, false, Duration::from_secs(2))
        .err()
        .expect("no server");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert!(err.to_string().contains("TCPStore"), "{err}");
}
