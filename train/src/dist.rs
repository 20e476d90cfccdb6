//! Data-parallel training on c10d (the engine of PyTorch's DistributedDataParallel, through
//! `oats_c10d`): gloo on CPU, NCCL on CUDA. DESIGN.md, "Data-parallel training", has the
//! reasoning; in short:
//!
//! - **One process's run, split.** `batch_size` stays the *global* batch. Every rank draws
//!   the same data order, augmentation, λ and PGD start noise for the whole global batch from
//!   the same seeded generators, and computes only its rows ([`Dist::shard`]). Each rank's
//!   loss is divided by the global batch, and gradients are summed across ranks, so the
//!   step is one process's step up to float summation order.
//! - **State.** At start rank 0 broadcasts parameters, buffers, the λ encoding and the
//!   momentum buffers; the other ranks get the config and epoch through the store, so they
//!   never read the run directory. Only rank 0 writes checkpoints and logs.
//! - **BN.** Batch statistics stay per rank (no SyncBN). Before every validation and
//!   checkpoint, running statistics are averaged across ranks, weighted by the samples each
//!   rank normalised since the last average ([`Dist::sync_bn`]); afterwards every rank holds
//!   the same values, which is what the checkpoint saves and a resume starts from.
//! - **Faults.** Every collective is bounded by the timeout; a rank that died closes its
//!   sockets and the others fail at their next collective.
use std::ffi::OsString;
use std::ops::Range;
use std::time::Duration;

use clap::Args;
use oats_c10d::{GlooDevice, ProcessGroup, ReduceOp, Store};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::Meta;
use crate::data::Dataset;
use crate::error::{Result, TrainError};
use crate::nn::Bn;

/// Store key of rank 0's [`Start`].
pub const START_KEY: &str = "oats/start";

/// What rank 0 tells the other ranks before training: the model to build (config, shapes,
/// completed epochs), which optimiser buffers exist, and a fingerprint of its data.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Start {
    pub meta: Meta,
    pub momentum: Vec<String>,
    pub data: DataPrint,
    /// Name and shape of every tensor rank 0 will broadcast, in order: a rank that built
    /// another model (another build of oats-train) refuses before the broadcast, by name.
    pub state: Vec<(String, Vec<i64>)>,
}

impl Start {
    pub fn to_yaml(&self) -> Result<String> {
        serde_yaml::to_string(self).map_err(|source| TrainError::Yaml {
            what: "the data-parallel start message",
            source,
        })
    }

    /// Waits for rank 0's message (up to the timeout) and reads it.
    pub fn receive(dist: &Dist) -> Result<Start> {
        let bytes = dist.fetch(START_KEY)?;
        let text = String::from_utf8(bytes).map_err(|_| TrainError::DistSetup {
            rank: dist.rank(),
            reason: "rank 0's start message is not UTF-8".into(),
        })?;
        serde_yaml::from_str(&text).map_err(|e| TrainError::DistSetup {
            rank: dist.rank(),
            reason: format!("rank 0's start message does not parse ({e}); are all ranks the same oats-train build?"),
        })
    }
}

/// Sizes and sums of a run's data: ranks that read different files (another directory,
/// another version of a data set) would train on different samples under the same index.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataPrint {
    pub train: usize,
    pub val: usize,
    pub label_sum: i64,
    pub pixel_sum: f64,
}

impl DataPrint {
    pub fn of(train: &Dataset, val: &Dataset) -> DataPrint {
        let sum = |d: &Dataset| d.images.iter().map(|&p| f64::from(p)).sum::<f64>();
        DataPrint {
            train: train.len(),
            val: val.len(),
            label_sum: train.labels.iter().chain(&val.labels).sum(),
            pixel_sum: sum(train) + sum(val),
        }
    }
}

impl std::fmt::Display for DataPrint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} train / {} val images, label sum {}, pixel sum {}",
            self.train, self.val, self.label_sum, self.pixel_sum
        )
    }
}

/// Flags of a data-parallel launch. Each falls back to the torchrun variable of the same
/// name (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
#[derive(Args, Clone, Debug, Default, PartialEq)]
pub struct DistArgs {
    /// Start N training processes on this machine (ranks 0..N−1 on 127.0.0.1, one intra-op
    /// thread each unless OMP_NUM_THREADS is set), like `torchrun --nproc-per-node N`, and
    /// wait for them; if one fails, the others are stopped.
    #[arg(long, value_name = "N")]
    pub nproc: Option<usize>,
    /// This process's rank in 0..world size (default: $RANK).
    #[arg(long)]
    pub rank: Option<usize>,
    /// Number of training processes in all (default: $WORLD_SIZE; unset = not distributed).
    #[arg(long)]
    pub world_size: Option<usize>,
    /// This process's index on its machine; picks its GPU (default: $LOCAL_RANK, else the rank).
    #[arg(long)]
    pub local_rank: Option<usize>,
    /// Host of rank 0, where the rendezvous store listens (default: $MASTER_ADDR, else 127.0.0.1).
    #[arg(long)]
    pub master_addr: Option<String>,
    /// Port of the rendezvous store on rank 0 (default: $MASTER_PORT, else 29500).
    #[arg(long)]
    pub master_port: Option<u16>,
    /// Seconds a rank waits for the others, at start-up and in every collective, before it
    /// fails. Must exceed the longest phase rank 0 runs alone (validation and checkpoint).
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub dist_timeout: u64,
}

/// A resolved data-parallel launch: who this process is and where rank 0 is.
#[derive(Clone, Debug, PartialEq)]
pub struct DistEnv {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    pub timeout: Duration,
}

/// Upper bound on the world size (one process per core or GPU; more is a typo).
pub const MAX_WORLD: usize = 4096;

fn env_var<T: std::str::FromStr>(name: &str) -> Result<Option<T>> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| TrainError::invalid(name, &v, "not a valid value (environment)")),
    }
}

impl DistEnv {
    /// The launch the flags and the environment describe; `None` when neither gives a world
    /// size (a plain single-process run).
    pub fn resolve(a: &DistArgs) -> Result<Option<DistEnv>> {
        let world = match a.world_size {
            Some(w) => Some(w),
            None => env_var::<usize>("WORLD_SIZE")?,
        };
        let Some(world) = world else {
            if let Some(r) = a.rank {
                return Err(TrainError::invalid(
                    "--rank",
                    r,
                    "needs --world-size (or $WORLD_SIZE)",
                ));
            }
            if let Some(r) = a.local_rank {
                return Err(TrainError::invalid(
                    "--local-rank",
                    r,
                    "needs --world-size (or $WORLD_SIZE)",
                ));
            }
            return Ok(None);
        };
        if !(1..=MAX_WORLD).contains(&world) {
            return Err(TrainError::invalid(
                "world size",
                world,
                format!("must be in 1..={MAX_WORLD}"),
            ));
        }
        let rank = match a.rank {
            Some(r) => r,
            None => env_var::<usize>("RANK")?.ok_or_else(|| {
                TrainError::invalid(
                    "rank",
                    "unset",
                    "a world size was given: set --rank or $RANK",
                )
            })?,
        };
        if rank >= world {
            return Err(TrainError::invalid(
                "rank",
                rank,
                format!("must be below the world size {world}"),
            ));
        }
        let local_rank = match a.local_rank {
            Some(r) => r,
            None => env_var::<usize>("LOCAL_RANK")?.unwrap_or(rank),
        };
        let master_addr = match &a.master_addr {
            Some(h) => h.clone(),
            None => env_var::<String>("MASTER_ADDR")?.unwrap_or_else(|| "127.0.0.1".into()),
        };
        let master_port = match a.master_port {
            Some(p) => p,
            None => env_var::<u16>("MASTER_PORT")?.unwrap_or(29500),
        };
        if !(1..=7 * 24 * 3600).contains(&a.dist_timeout) {
            return Err(TrainError::invalid(
                "--dist-timeout",
                a.dist_timeout,
                "must be in 1..=604800 seconds",
            ));
        }
        Ok(Some(DistEnv {
            rank,
            world,
            local_rank,
            master_addr,
            master_port,
            timeout: Duration::from_secs(a.dist_timeout),
        }))
    }

    /// The local network device gloo binds: $GLOO_SOCKET_IFNAME as PyTorch reads it, the
    /// loopback address when rank 0 is on this machine's loopback, else the address of this
    /// machine's host name.
    fn gloo_device(&self) -> GlooDevice {
        if let Ok(i) = std::env::var("GLOO_SOCKET_IFNAME") {
            if !i.is_empty() {
                return GlooDevice::Interface(i);
            }
        }
        let loopback = matches!(self.master_addr.as_str(), "localhost" | "::1")
            || self.master_addr.starts_with("127.");
        if loopback {
            GlooDevice::Host("127.0.0.1".into())
        } else {
            GlooDevice::Default
        }
    }
}

/// This rank's membership in a running group.
pub struct Dist {
    pub env: DistEnv,
    store: Store,
    pg: ProcessGroup,
}

/// Gradients are all-reduced in buckets of at most this many bytes (DDP's default, 25 MiB):
/// one flat copy per bucket, not one collective per tensor.
pub const BUCKET_BYTES: i64 = 25 << 20;

impl Dist {
    /// Joins (rank 0: serves) the rendezvous store at MASTER_ADDR:MASTER_PORT and forms the
    /// group: gloo for CPU training, NCCL for CUDA.
    pub fn connect(env: DistEnv, device: Device) -> Result<Dist> {
        let fail = |what: &str, source| TrainError::Dist {
            rank: env.rank,
            what: format!(
                "{what} ({} ranks, rendezvous at {}:{}, timeout {} s)",
                env.world,
                env.master_addr,
                env.master_port,
                env.timeout.as_secs()
            ),
            source,
        };
        let store = Store::tcp(
            &env.master_addr,
            env.master_port,
            env.world,
            env.rank == 0,
            env.timeout,
        )
        .map_err(|e| fail("joining the rendezvous store", e))?;
        let pg = match device {
            Device::Cuda(gpu) => ProcessGroup::nccl(&store, env.rank, env.world, env.timeout, gpu),
            _ => ProcessGroup::gloo(&store, env.rank, env.world, env.timeout, &env.gloo_device()),
        }
        .map_err(|e| fail("forming the process group", e))?;
        Ok(Dist { env, store, pg })
    }

    pub fn rank(&self) -> usize {
        self.env.rank
    }

    pub fn world(&self) -> usize {
        self.env.world
    }

    pub fn is_root(&self) -> bool {
        self.env.rank == 0
    }

    pub fn backend(&self) -> &'static str {
        self.pg.backend()
    }

    fn err(&self, what: impl Into<String>) -> impl FnOnce(oats_c10d::Error) -> TrainError {
        let (rank, what) = (self.env.rank, what.into());
        move |source| TrainError::Dist { rank, what, source }
    }

    /// This rank's rows of a global batch of `b`: contiguous, in rank order, sizes differing
    /// by at most one (a rank may get none of a batch smaller than the world).
    pub fn shard(&self, b: usize) -> Range<usize> {
        shard(b, self.env.rank, self.env.world)
    }

    /// Rank 0 publishes a value for every rank to read with [`Dist::fetch`].
    pub fn publish(&self, key: &str, value: &[u8]) -> Result<()> {
        self.store
            .set(key, value)
            .map_err(self.err(format!("publishing {key}")))
    }

    pub fn fetch(&self, key: &str) -> Result<Vec<u8>> {
        self.store
            .get(key)
            .map_err(self.err(format!("waiting for rank 0's {key}")))
    }

    pub fn barrier(&self) -> Result<()> {
        self.pg.barrier().map_err(self.err("barrier"))
    }

    fn all_reduce(&self, t: &mut Tensor, op: ReduceOp, what: &str) -> Result<()> {
        self.pg.all_reduce(t, op).map_err(self.err(what))
    }

    /// Sums `values` across ranks (f64 on the group's device).
    pub fn sum(&self, values: &mut [f64], what: &str) -> Result<()> {
        let mut t = Tensor::from_slice(values).to_device(self.pg.device());
        self.all_reduce(&mut t, ReduceOp::Sum, what)?;
        let out = Vec::<f64>::try_from(t.to_device(Device::Cpu))?;
        values.copy_from_slice(&out);
        Ok(())
    }

    /// Overwrites every tensor with rank 0's (parameters, buffers, optimiser state), in
    /// place and outside autograd.
    pub fn broadcast_from_root(&self, tensors: &mut [Tensor]) -> Result<()> {
        let _ng = tch::no_grad_guard();
        for t in tensors.iter_mut() {
            if t.is_contiguous() {
                self.pg
                    .broadcast(t, 0)
                    .map_err(self.err("broadcasting rank 0's state"))?;
            } else {
                // c10d sends dense buffers: a strided tensor goes through a dense copy.
                let mut dense = t.contiguous();
                self.pg
                    .broadcast(&mut dense, 0)
                    .map_err(self.err("broadcasting rank 0's state"))?;
                t.f_copy_(&dense)?;
            }
        }
        Ok(())
    }

    /// Sums the gradients of `vars` across ranks, in buckets of [`BUCKET_BYTES`], together
    /// with the step's statistics `stats` (loss, correct predictions).
    ///
    /// A parameter no rank computed a gradient for keeps none (the optimiser skips it, as in
    /// one process); one that only some ranks touched (e.g. the adversarial BN on a rank whose
    /// rows are all clean) gets a zero gradient first, so that every rank applies the same
    /// update. The losses were divided by the global batch, so the sum is the global mean.
    pub fn all_reduce_grads(&self, vars: &[Tensor], stats: &mut [f64]) -> Result<()> {
        let mut head: Vec<f64> = vars
            .iter()
            .map(|v| f64::from(u8::from(v.grad().defined())))
            .collect();
        head.extend_from_slice(stats);
        self.sum(&mut head, "all-reducing the step's statistics")?;
        stats.copy_from_slice(&head[vars.len()..]);
        let used: Vec<&Tensor> = vars
            .iter()
            .zip(&head)
            .filter(|(_, &n)| n > 0.0)
            .map(|(v, _)| v)
            .collect();
        let missing: Vec<Tensor> = used
            .iter()
            .filter(|v| !v.grad().defined())
            .map(|v| v.sum(Kind::Float) * 0.0)
            .collect();
        if !missing.is_empty() {
            Tensor::stack(&missing, 0).sum(Kind::Float).backward();
        }
        let _ng = tch::no_grad_guard();
        let mut start = 0;
        while start < used.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < used.len() && (end == start || bytes + nbytes(used[end]) <= BUCKET_BYTES) {
                bytes += nbytes(used[end]);
                end += 1;
            }
            let grads: Vec<Tensor> = used[start..end].iter().map(|v| v.grad()).collect();
            let mut flat = Tensor::cat(
                &grads.iter().map(|g| g.reshape([-1])).collect::<Vec<_>>(),
                0,
            );
            self.all_reduce(&mut flat, ReduceOp::Sum, "all-reducing gradients")?;
            let mut off = 0;
            for g in &grads {
                let n = g.numel() as i64;
                let mut g = g.shallow_clone();
                g.f_copy_(&flat.narrow(0, off, n).view_as(&g))?;
                off += n;
            }
            start = end;
        }
        Ok(())
    }

    /// Averages BN running statistics across ranks, weighted by the samples each rank
    /// normalised in train mode since the last call (a BN no rank used keeps its value, which
    /// is then the same everywhere). Afterwards every rank holds the same statistics.
    /// Averaging variances leaves out the spread of the ranks' means (the pooled variance
    /// would add it); with shards drawn from one shuffled order that spread is small, and it
    /// is what DDP users get from averaging buffers too.
    pub fn sync_bn(&self, bns: &[&Bn]) -> Result<()> {
        if bns.is_empty() {
            return Ok(());
        }
        let _ng = tch::no_grad_guard();
        let own: Vec<f64> = bns.iter().map(|b| b.take_seen() as f64).collect();
        let mut total = own.clone();
        self.sum(&mut total, "all-reducing BN sample counts")?;
        let weighted: Vec<Tensor> = bns
            .iter()
            .zip(&own)
            .map(|(b, &c)| {
                Tensor::cat(&[&b.running_mean, &b.running_var], 0).to_kind(Kind::Double) * c
            })
            .collect();
        let mut flat = Tensor::cat(&weighted, 0);
        self.all_reduce(&mut flat, ReduceOp::Sum, "averaging BN statistics")?;
        let mut off = 0;
        for (b, &n) in bns.iter().zip(&total) {
            let c = b.running_mean.numel() as i64;
            if n > 0.0 {
                let avg = flat.narrow(0, off, 2 * c) / n;
                let kind = b.running_mean.kind();
                b.running_mean
                    .shallow_clone()
                    .f_copy_(&avg.narrow(0, 0, c).to_kind(kind))?;
                b.running_var
                    .shallow_clone()
                    .f_copy_(&avg.narrow(0, c, c).to_kind(kind))?;
            }
            off += 2 * c;
        }
        Ok(())
    }

    /// Checks that every rank holds the same `tensors` (parameters and buffers), bit for
    /// bit: per tensor, the wrapping int64 sums of its f32 bit patterns, plain and weighted by
    /// position. Integer sums do not depend on the order of summation (thread count, SIMD
    /// width, CPU), and NaNs compare by their bits, so only a real difference is reported,
    /// naming the tensor.
    pub fn check_replicas(&self, tensors: &[(String, Tensor)]) -> Result<()> {
        let _ng = tch::no_grad_guard();
        let prints: Vec<Tensor> = tensors
            .iter()
            .map(|(_, t)| {
                let bits = t
                    .to_kind(Kind::Float)
                    .contiguous()
                    .view_dtype(Kind::Int)
                    .reshape([-1])
                    .to_kind(Kind::Int64);
                let n = bits.size()[0];
                let pos = Tensor::arange(n, (Kind::Int64, bits.device())).remainder(1021) + 1;
                Tensor::stack(&[bits.sum(Kind::Int64), (&bits * pos).sum(Kind::Int64)], 0)
            })
            .collect();
        if prints.is_empty() {
            return Ok(());
        }
        let mut hi = Tensor::cat(&prints, 0);
        let mut lo = hi.copy();
        self.all_reduce(&mut hi, ReduceOp::Max, "comparing replicas")?;
        self.all_reduce(&mut lo, ReduceOp::Min, "comparing replicas")?;
        let differ = Vec::<bool>::try_from(hi.ne_tensor(&lo).to_device(Device::Cpu))?;
        match differ.iter().position(|&d| d) {
            None => Ok(()),
            Some(i) => Err(TrainError::Replicas {
                rank: self.env.rank,
                tensor: tensors[i / 2].0.clone(),
            }),
        }
    }
}

/// The command-line arguments of a rank started by [`launch_local`]: the launcher's own,
/// without `--nproc N` / `--nproc=N`.
pub fn strip_nproc(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--nproc" {
            it.next();
        } else if !a.to_string_lossy().starts_with("--nproc=") {
            out.push(a);
        }
    }
    out
}

/// How long the launcher lets the other ranks end on their own after one failed (they
/// usually fail at once, with their own message, when its sockets close) before it kills
/// them.
pub const LAUNCH_GRACE: Duration = Duration::from_secs(10);

/// Runs `nproc` copies of this program with `args` as ranks 0..nproc−1 of one run on this
/// machine (the torchrun variables set, rank 0's store on 127.0.0.1:`port` or a free port),
/// and waits for all of them. When one fails, the others get [`LAUNCH_GRACE`] to stop on
/// their own and are then killed; the error names the first rank that failed. Ranks die with
/// the launcher (Linux: parent-death signal), so none is left running unattended.
pub fn launch_local(nproc: usize, args: &[OsString], port: Option<u16>) -> Result<()> {
    if !(1..=MAX_WORLD).contains(&nproc) {
        return Err(TrainError::invalid(
            "--nproc",
            nproc,
            format!("must be in 1..={MAX_WORLD}"),
        ));
    }
    let exe = std::env::current_exe().map_err(|e| TrainError::io("<current executable>", e))?;
    let port = match port.map_or_else(|| env_var::<u16>("MASTER_PORT"), |p| Ok(Some(p)))? {
        Some(p) => p,
        None => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| TrainError::io("127.0.0.1:0 (looking for a free port)", e))?,
    };
    let mut children = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
        if std::env::var_os("OMP_NUM_THREADS").is_none() {
            // As torchrun: N processes with all cores' threads each would oversubscribe.
            cmd.env("OMP_NUM_THREADS", "1");
        }
        die_with_parent(&mut cmd);
        match cmd.spawn() {
            Ok(c) => children.push(Some(c)),
            Err(e) => {
                stop(&mut children);
                return Err(TrainError::io(&exe, e));
            }
        }
    }
    let mut failed: Vec<(usize, std::process::ExitStatus)> = Vec::new();
    let mut deadline = None;
    loop {
        let mut running = 0;
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            match child.try_wait() {
                Ok(Some(status)) => {
                    *slot = None;
                    if !status.success() {
                        failed.push((rank, status));
                        deadline.get_or_insert(std::time::Instant::now() + LAUNCH_GRACE);
                    }
                }
                Ok(None) => running += 1,
                Err(e) => {
                    stop(&mut children);
                    return Err(TrainError::io(format!("rank {rank}'s process"), e));
                }
            }
        }
        if running == 0 {
            break;
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            stop(&mut children);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if failed.is_empty() {
        return Ok(());
    }
    // A rank killed by a signal is the likelier cause than one that failed on its own (at
    // its next collective, after the other died): it goes first.
    use std::os::unix::process::ExitStatusExt;
    failed.sort_by_key(|(rank, status)| (status.signal().is_none(), *rank));
    let list: Vec<String> = failed
        .iter()
        .map(|(rank, status)| format!("rank {rank} ended with {status}"))
        .collect();
    Err(TrainError::Launch(format!(
        "{}; that ends the run (the other ranks stop on their own or are killed after {} s)",
        list.join(", "),
        LAUNCH_GRACE.as_secs()
    )))
}

fn stop(children: &mut [Option<std::process::Child>]) {
    for c in children.iter_mut().flatten() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and
    // exec. A launcher that died before prctl took effect is caught by the getppid check.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the launcher is gone"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_: &mut std::process::Command) {}

fn nbytes(t: &Tensor) -> i64 {
    t.numel() as i64 * 4
}

/// [`Dist::shard`] as a function of (batch, rank, world).
pub fn shard(b: usize, rank: usize, world: usize) -> Range<usize> {
    (rank * b / world)..((rank + 1) * b / world)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nproc_is_taken_out_of_a_rank_s_arguments() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            strip_nproc(args(&[
                "train",
                "--nproc",
                "2",
                "--config",
                "c.yaml",
                "--nproc=3"
            ])),
            args(&["train", "--config", "c.yaml"])
        );
    }

    #[test]
    fn shards_cover_the_batch_in_rank_order() {
        for world in 1..6 {
            for b in 0..20 {
                let parts: Vec<_> = (0..world).map(|r| shard(b, r, world)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[world - 1].end, b);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let (lo, hi) = (
                    parts.iter().map(|p| p.len()).min().unwrap_or(0),
                    parts.iter().map(|p| p.len()).max().unwrap_or(0),
                );
                assert!(hi - lo <= 1, "{b} over {world}: {parts:?}");
            }
        }
    }
}
