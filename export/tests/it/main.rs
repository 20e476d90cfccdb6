//! One test binary for the crate: every file beside this one is a module of it, so cargo
//! compiles and links the crate's integration tests once instead of once per file.

mod e2e;
mod hostile_cli;
mod hostile_fs;
mod package;
