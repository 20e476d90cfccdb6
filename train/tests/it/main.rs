//! One test binary for the crate: every file beside this one is a module of it, so cargo
//! compiles and links the crate's integration tests once instead of once per file.

mod common;
mod distributed;
mod exits;
mod experiment_configs;
mod hostile;
mod hostile_fs;
mod resume;
mod train_eval;
