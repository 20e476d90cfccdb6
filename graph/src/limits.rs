//! Bounds on every size and count a package declares, checked before anything is allocated
//! or looped over for it. A package is read by devices from files that may be corrupt or
//! hostile: a header announcing 10⁹ channels or 10⁶ blocks must end as a typed error naming
//! the value and the limit, never as an abort or an hour of folding.
//!
//! Each limit is far above what any oats preset needs (the largest, ResNet-34 OATS, has 512
//! channels, 16 blocks, a 128-dimensional λ encoding, 6 λ and 3 widths, and its package is
//! ≈ 134 MB), so none of them restricts a real model.

/// Most bytes of a package file: ≈ 8× the largest preset's package (ResNet-34 OATS,
/// ≈ 134 MB). Checked on the file's length before it is read.
pub const MAX_PACKAGE_BYTES: u64 = 1 << 30;

/// Most bytes of the safetensors header (tensor table and metadata). The largest preset's is
/// ≈ 60 KB; the bound keeps the JSON parse of a hostile header small.
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// Most image channels of the input (data sets have 1 or 3).
pub const MAX_INPUT_CHANNELS: usize = 64;

/// Largest input height or width (the presets take 28–96 px images; the trainer's own bound,
/// `oats_train::limits::MAX_IMAGE_SIDE`, is the same).
pub const MAX_INPUT_SIDE: usize = 4096;

/// Most channels of one layer (WRN-16-8's widest layer has 512).
pub const MAX_LAYER_CHANNELS: usize = 1 << 14;

/// Largest convolution kernel side (the networks use 1 and 3).
pub const MAX_KERNEL: usize = 15;

/// Largest convolution stride (the networks use 1 and 2).
pub const MAX_STRIDE: usize = 16;

/// Most residual blocks (ResNet-34 has 16, WRN-40-2 18).
pub const MAX_BLOCKS: usize = 1024;

/// Most classes (the trainer's own bound, `oats_train::limits::MAX_CLASSES`).
pub const MAX_CLASSES: usize = 100_000;

/// Most widths of a slimmable model (the presets train 3).
pub const MAX_WIDTHS: usize = 64;

/// Most training λ values (the presets train 6; the trainer allows at most the encoding
/// dimension).
pub const MAX_LAMBDAS: usize = 4096;

/// Largest λ-encoding dimension (the trainer's own bound on `encoding_dim`).
pub const MAX_ENCODING_DIM: usize = 4096;

/// Most f32 values in all tensors of one package: [`MAX_PACKAGE_BYTES`] / 4. The declared
/// architecture's total is checked against it before any tensor is compared or copied.
pub const MAX_VALUES: u64 = MAX_PACKAGE_BYTES / 4;

/// Longest `name` of an architecture (informational, e.g. "resnet34").
pub const MAX_NAME_CHARS: usize = 64;
