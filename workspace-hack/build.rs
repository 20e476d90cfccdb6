//! Empty: cargo resolves a package's build-dependencies (and so unifies their features with
//! the proc macros and build scripts of the rest of the build) only when it has a build script.
fn main() {}
