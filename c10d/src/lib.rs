//! PyTorch's distributed engine, c10d, from Rust: the rendezvous store (`TCPStore`) and a
//! process group (`ProcessGroupGloo` on CPU, `ProcessGroupNCCL` on CUDA with the `nccl`
//! feature) with the collectives data-parallel training needs: all-reduce, broadcast, barrier.
//!
//! This is the engine behind `torch.nn.parallel.DistributedDataParallel`, already compiled
//! into the libtorch that tch links; this crate is a thin safe layer over a small C ABI
//! (`src/shim.cpp`) and implements no collective itself. What data parallelism *means* for an
//! oats model (which tensors, when, in which order) lives in `oats_train::dist`.
//!
//! With gloo every operation is bounded by the timeout given at construction: a peer that
//! died makes the next collective fail at once (its sockets close); a peer that hangs makes
//! it fail after the timeout. Nothing blocks forever. (NCCL, unbuilt here, behaves
//! otherwise: its collectives are asynchronous on the GPU and its watchdog aborts the
//! process on a timeout.)
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_void};
use std::ptr::{self, NonNull};
use std::time::Duration;

use tch::{Device, Tensor};

mod ffi;

/// A failed c10d operation, with c10d's own message (the peer that vanished, the timeout).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("c10d {op}: {message}")]
    C10d { op: &'static str, message: String },
    #[error("c10d {op}: {reason}")]
    Invalid { op: &'static str, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

fn invalid(op: &'static str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        op,
        reason: reason.into(),
    }
}

fn cstring(op: &'static str, what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| invalid(op, format!("{what} {s:?} contains a NUL byte")))
}

/// Takes the message the shim allocated.
fn take_error(op: &'static str, err: *mut c_char) -> Error {
    let message = if err.is_null() {
        "failed without a message (out of memory?)".to_string()
    } else {
        // SAFETY: the shim wrote a NUL-terminated malloc'ed string, freed here exactly once.
        let m = unsafe { CStr::from_ptr(err) }
            .to_string_lossy()
            .into_owned();
        unsafe { ffi::oats_c10d_free(err.cast()) };
        m
    };
    Error::C10d { op, message }
}

fn check(op: &'static str, rc: i32, err: *mut c_char) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(take_error(op, err))
    }
}

fn millis(op: &'static str, timeout: Duration) -> Result<i64> {
    match i64::try_from(timeout.as_millis()) {
        Ok(ms) if ms > 0 => Ok(ms),
        _ => Err(invalid(
            op,
            format!("timeout {timeout:?} must be at least 1 ms"),
        )),
    }
}

/// A key-value store all ranks reach: rank 0 serves it on `host:port`, the others connect.
/// Groups rendezvous through it; oats also passes its small start-up facts through it.
pub struct Store {
    ptr: NonNull<c_void>,
}

// SAFETY: c10d's stores are used from any thread (DDP's reducer thread does); the handle
// owns its object.
unsafe impl Send for Store {}

impl Store {
    /// Serves (`is_server`, rank 0) or joins the store at `host:port`. The server waits for
    /// all `world` ranks to connect; either side fails after `timeout` if they do not.
    pub fn tcp(
        host: &str,
        port: u16,
        world: usize,
        is_server: bool,
        timeout: Duration,
    ) -> Result<Store> {
        const OP: &str = "TCPStore";
        let h = cstring(OP, "host", host)?;
        let ms = millis(OP, timeout)?;
        let world = i64::try_from(world).map_err(|_| invalid(OP, "world size too large"))?;
        let mut err = ptr::null_mut();
        // SAFETY: valid C string; err is written only on failure.
        let p = unsafe {
            ffi::oats_c10d_tcp_store(h.as_ptr(), port, world, i32::from(is_server), ms, &mut err)
        };
        NonNull::new(p)
            .map(|ptr| Store { ptr })
            .ok_or_else(|| take_error(OP, err))
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        const OP: &str = "store set";
        let k = cstring(OP, "key", key)?;
        let mut err = ptr::null_mut();
        // SAFETY: the slice outlives the call; the shim copies it.
        let rc = unsafe {
            ffi::oats_c10d_store_set(
                self.ptr.as_ptr(),
                k.as_ptr(),
                value.as_ptr(),
                value.len(),
                &mut err,
            )
        };
        check(OP, rc, err)
    }

    /// The value of `key`, waiting for a rank to set it (up to the store's timeout).
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        const OP: &str = "store get";
        let k = cstring(OP, "key", key)?;
        let (mut data, mut len, mut err) = (ptr::null_mut(), 0usize, ptr::null_mut());
        // SAFETY: out-pointers are valid; on success data holds len malloc'ed bytes.
        let rc = unsafe {
            ffi::oats_c10d_store_get(self.ptr.as_ptr(), k.as_ptr(), &mut data, &mut len, &mut err)
        };
        check(OP, rc, err)?;
        // SAFETY: see above; freed once, after copying.
        let out = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
        unsafe { ffi::oats_c10d_free(data.cast()) };
        Ok(out)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: created by the shim, dropped once.
        unsafe { ffi::oats_c10d_store_free(self.ptr.as_ptr()) }
    }
}

/// Which local network device gloo binds (as `GLOO_SOCKET_IFNAME` and friends in PyTorch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GlooDevice {
    /// The address this machine's host name resolves to.
    Default,
    /// The address of a host name or IP literal (127.0.0.1 for one machine).
    Host(String),
    /// A network interface by name (e.g. `eth0`).
    Interface(String),
}

/// Element-wise reduction of an all-reduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

/// A process group: `world` ranks that run the same collectives in the same order.
pub struct ProcessGroup {
    ptr: NonNull<c_void>,
    rank: usize,
    world: usize,
    backend: &'static str,
    /// Tensors of a group live on this device: CPU for gloo, the rank's GPU for NCCL.
    device: Device,
}

// SAFETY: as for Store; oats calls a group from one thread at a time.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// A gloo group over `store` (TCP between the ranks, CPU tensors). Waits up to `timeout`
    /// for every rank to join, and bounds every later collective by it.
    pub fn gloo(
        store: &Store,
        rank: usize,
        world: usize,
        timeout: Duration,
        device: &GlooDevice,
    ) -> Result<ProcessGroup> {
        const OP: &str = "ProcessGroupGloo";
        check_rank(OP, rank, world)?;
        let ms = millis(OP, timeout)?;
        let (kind, arg) = match device {
            GlooDevice::Default => (0, String::new()),
            GlooDevice::Host(h) => (1, h.clone()),
            GlooDevice::Interface(i) => (2, i.clone()),
        };
        let arg = cstring(OP, "device", &arg)?;
        let mut err = ptr::null_mut();
        // SAFETY: store is alive for the call (c10d keeps its own reference afterwards).
        let p = unsafe {
            ffi::oats_c10d_gloo(
                store.ptr.as_ptr(),
                rank as i64,
                world as i64,
                ms,
                kind,
                arg.as_ptr(),
                &mut err,
            )
        };
        NonNull::new(p)
            .map(|ptr| ProcessGroup {
                ptr,
                rank,
                world,
                backend: "gloo",
                device: Device::Cpu,
            })
            .ok_or_else(|| take_error(OP, err))
    }

    /// An NCCL group (CUDA tensors on `cuda:{gpu}`); an error in builds without the `nccl`
    /// feature.
    pub fn nccl(
        store: &Store,
        rank: usize,
        world: usize,
        timeout: Duration,
        gpu: usize,
    ) -> Result<ProcessGroup> {
        const OP: &str = "ProcessGroupNCCL";
        check_rank(OP, rank, world)?;
        let ms = millis(OP, timeout)?;
        let mut err = ptr::null_mut();
        // SAFETY: as for gloo.
        let p = unsafe {
            ffi::oats_c10d_nccl(store.ptr.as_ptr(), rank as i64, world as i64, ms, &mut err)
        };
        NonNull::new(p)
            .map(|ptr| ProcessGroup {
                ptr,
                rank,
                world,
                backend: "nccl",
                device: Device::Cuda(gpu),
            })
            .ok_or_else(|| take_error(OP, err))
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// c10d's collectives work on dense contiguous tensors of the group's device, in place:
    /// anything else is refused here rather than failing (or copying) inside c10d.
    fn check_tensor(&self, op: &'static str, t: &Tensor) -> Result<()> {
        if !t.defined() {
            return Err(invalid(op, "undefined tensor"));
        }
        if !t.is_contiguous() {
            return Err(invalid(op, "tensor is not contiguous"));
        }
        if t.device() != self.device {
            return Err(invalid(
                op,
                format!(
                    "tensor on {:?}, the {} group works on {:?}",
                    t.device(),
                    self.backend,
                    self.device
                ),
            ));
        }
        Ok(())
    }

    /// Reduces `t` element-wise across all ranks, in place; every rank gets the result.
    pub fn all_reduce(&self, t: &mut Tensor, op: ReduceOp) -> Result<()> {
        const OP: &str = "all-reduce";
        self.check_tensor(OP, t)?;
        let code = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        };
        let mut err = ptr::null_mut();
        // SAFETY: t is a live tch tensor (an at::Tensor* on the C++ side).
        let rc = unsafe {
            ffi::oats_c10d_all_reduce(self.ptr.as_ptr(), t.as_mut_ptr().cast(), code, &mut err)
        };
        check(OP, rc, err)
    }

    /// Overwrites `t` on every rank with `root`'s `t` (same shape and kind everywhere).
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        const OP: &str = "broadcast";
        self.check_tensor(OP, t)?;
        check_rank(OP, root, self.world)?;
        let mut err = ptr::null_mut();
        // SAFETY: as for all_reduce.
        let rc = unsafe {
            ffi::oats_c10d_broadcast(
                self.ptr.as_ptr(),
                t.as_mut_ptr().cast(),
                root as i64,
                &mut err,
            )
        };
        check(OP, rc, err)
    }

    /// Returns when every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        let mut err = ptr::null_mut();
        // SAFETY: a live group.
        let rc = unsafe { ffi::oats_c10d_barrier(self.ptr.as_ptr(), &mut err) };
        check("barrier", rc, err)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by the shim, dropped once.
        unsafe { ffi::oats_c10d_group_free(self.ptr.as_ptr()) }
    }
}

fn check_rank(op: &'static str, rank: usize, world: usize) -> Result<()> {
    if world == 0 || rank >= world || world > i32::MAX as usize {
        return Err(invalid(op, format!("rank {rank} of world size {world}")));
    }
    Ok(())
}
