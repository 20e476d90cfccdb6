//! Empty. The host-side pins (the build-dependencies in Cargo.toml: syn for the proc macros,
//! cc for the build scripts) are declared as this package's build-script dependencies.
fn main() {}
