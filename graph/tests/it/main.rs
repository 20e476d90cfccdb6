//! One test binary for the crate: every file beside this one is a module of it, so cargo
//! compiles and links the crate's integration tests once instead of once per file.

mod common;
mod exits;
mod hostile_package;
mod int8;
mod package;
