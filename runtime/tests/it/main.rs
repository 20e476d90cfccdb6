//! One test binary for the crate: every file beside this one is a module of it, so cargo
//! compiles and links the crate's integration tests once instead of once per file.

mod bench;
mod cli;
mod common;
mod derive;
mod fuzz;
mod hostile;
mod hostile_fs;
mod int8;
mod integrity;
mod model;
mod ort;
/// oats-graph's synthetic packages (no trainer needed), shared with its own tests.
#[path = "../../../graph/tests/it/common/mod.rs"]
mod pkgfix;
mod pretrained;
mod soak;
