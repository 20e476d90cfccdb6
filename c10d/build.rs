//! Compiles `src/shim.cpp`, the C ABI over c10d, against the headers of the libtorch that
//! torch-sys links (its lib directory arrives as `DEP_TCH_LIBTORCH_LIB`; the headers sit
//! beside it in `../include`, in the set-up's layout and in a PyTorch install alike).
//!
//! `ProcessGroupGloo.hpp` includes gloo's own headers, which the torch wheel does not ship:
//! they come from Debian's `libgloo-dev`, extracted by `scripts/setup.sh` into the cache
//! (`OATS_GLOO_INCLUDE`), or from a system install in /usr/include. Only gloo's *declarations*
//! are compiled here; the code is the gloo inside libtorch_cpu.so, and the shim touches gloo
//! only through `std::shared_ptr<gloo::transport::Device>` handles.
use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/shim.cpp");
    for v in [
        "DEP_TCH_LIBTORCH_LIB",
        "OATS_GLOO_INCLUDE",
        "LIBTORCH_CXX11_ABI",
        "OATS_NCCL_INCLUDE",
        "OATS_CUDA_INCLUDE",
    ] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let lib = PathBuf::from(env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_else(|_| {
        panic!("torch-sys did not say where libtorch is (DEP_TCH_LIBTORCH_LIB); build with LIBTORCH set (scripts/setup.sh writes it to ~/.cache/oats/env.sh)")
    }));
    let include = lib.join("..").join("include");
    let gloo = match env::var_os("OATS_GLOO_INCLUDE") {
        Some(dir) => PathBuf::from(dir),
        None if PathBuf::from("/usr/include/gloo/context.h").exists() => PathBuf::from("/usr/include"),
        None => panic!(
            "gloo's headers were not found: set OATS_GLOO_INCLUDE to a folder holding gloo/context.h \
             (scripts/setup.sh extracts Debian's libgloo-dev into ~/.cache/oats/gloo/include and writes \
             the variable to ~/.cache/oats/env.sh), or install libgloo-dev"
        ),
    };
    if !gloo.join("gloo").join("context.h").exists() {
        panic!(
            "OATS_GLOO_INCLUDE={}: no gloo/context.h there",
            gloo.display()
        );
    }
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let mut b = cc::Build::new();
    b.cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include(&gloo)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .define("USE_C10D_GLOO", None)
        .file("src/shim.cpp");
    if env::var_os("CARGO_FEATURE_NCCL").is_some() {
        b.define("USE_C10D_NCCL", None).define("OATS_NCCL", None);
        for v in ["OATS_NCCL_INCLUDE", "OATS_CUDA_INCLUDE"] {
            match env::var_os(v) {
                Some(dir) => {
                    b.include(dir);
                }
                None => {
                    panic!("the nccl feature needs {v} (a folder with nccl.h / cuda_runtime_api.h)")
                }
            }
        }
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
    }
    b.compile("oats_c10d");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
