//! Puts libtorch's lib directory on the rpath of this crate's binaries and tests, so that
//! `oats-train` runs without LD_LIBRARY_PATH. torch-sys publishes the directory as
//! `DEP_TCH_LIBTORCH_LIB` only to crates that depend on it directly (we do).
//! With the `cuda` feature, libtorch_cuda is linked without `--as-needed`: otherwise the
//! linker drops it (no symbol is referenced directly) and CUDA is never initialised.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,-ltorch,--as-needed");
    }
}
