#!/usr/bin/env bash
# Installs everything oats needs outside the source tree, idempotently, into $OATS_CACHE
# (default ~/.cache/oats). A second run finds the stamps and does nothing.
#
#   libtorch/       include/ + lib/ extracted from the PyPI torch==2.13.0 wheel (the version
#                   tch 0.26 expects), plus libcudart/libcupti that this CUDA build's
#                   libtorch_cpu.so needs at load time. No GPU or driver is needed.
#   onnxruntime/    libonnxruntime.so.1.31.1 from the PyPI onnxruntime==1.31.1 wheel, which
#                   `ort` (load-dynamic) dlopens via ORT_DYLIB_PATH.
#   gloo/include/   gloo's headers from Debian's libgloo-dev (apt-get download, no root), which
#                   libtorch's ProcessGroupGloo.hpp includes: oats-c10d compiles against them.
#   venv/           python with onnx + onnxruntime + numpy (exact versions below), used by the
#                   tests that check exported graphs with the reference ONNX tooling; and
#                   maturin + pytest, which build and test the `oats` Python module.
#   env.sh          the variables to build and run with (sourced by ./oats).
#   (system)        with --tests (./oats test): cc, valgrind, a JDK, the aarch64 cross gcc +
#                   libc and qemu-user (apt), and the aarch64 Linux / Android / iOS Rust
#                   targets (rustup), when missing.
#
# Only PyPI is contacted (pip); nothing else is downloaded.
# A part is ready only when every file it must hold is there and non-empty (and, for the venv,
# the exact versions are installed); anything less, e.g. a cache cut short by a kill or a
# full disk, is rebuilt.
set -euo pipefail
shopt -s inherit_errexit # a failed download inside $(fetch ...) stops the set-up there

CACHE=${OATS_CACHE:-$HOME/.cache/oats}
TORCH_VERSION=2.13.0
ORT_VERSION=1.31.1
CUDART_VERSION=13.0.96
CUPTI_VERSION=13.0.85
# The checker venv's packages, pinned to versions tested together with onnxruntime==$ORT_VERSION
# on python 3.11 (numpy 2.4 needs python >= 3.11).
ONNX_VERSION=1.23.2
NUMPY_VERSION=2.4.6
# The Python bindings (python/): maturin builds the `oats` wheel into the venv, pytest tests it.
MATURIN_VERSION=1.16.0
PYTEST_VERSION=9.2.0
PY=${PYTHON:-python3}
mkdir -p "$CACHE/wheels"
log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] FAIL: %s\n' "$*" >&2; exit 1; }
missing() { # missing DIR FILE...: prints each FILE that is absent or empty under DIR
  local dir=$1 f
  shift
  for f in "$@"; do
    [ -s "$dir/$f" ] || echo "$f"
  done
}

fetch() { # fetch NAME==VERSION: download one wheel (no deps) into the cache once
  local spec=$1 name=${1%%==*}
  local pat
  pat=$(echo "$name" | tr '-' '_')
  if ! ls "$CACHE/wheels/${pat}-${spec##*==}-"*.whl >/dev/null 2>&1; then
    log "downloading $spec from PyPI"
    "$PY" -m pip download -q --no-deps --only-binary=:all: "$spec" -d "$CACHE/wheels"
  fi
  # shellcheck disable=SC2012 # wheel file names are plain ASCII
  ls "$CACHE/wheels/${pat}-${spec##*==}-"*.whl | head -n 1
}

# --- libtorch (light route, CPU) -------------------------------------------------------
LT=$CACHE/libtorch
# Everything the extraction below copies, and a header torch-sys compiles against.
LT_FILES=(lib/libtorch_cpu.so lib/libtorch.so lib/libc10.so lib/libgomp.so.1 lib/libshm.so
  lib/libcudart.so.13 lib/libcupti.so.13 include/torch/csrc/api/include/torch/torch.h)
if [ ! -f "$LT/.done-$TORCH_VERSION" ] || [ -n "$(missing "$LT" "${LT_FILES[@]}")" ]; then
  [ -e "$LT" ] && log "libtorch in $LT is incomplete or of another version: rebuilding it"
  torch_whl=$(fetch torch==$TORCH_VERSION)
  cudart_whl=$(fetch nvidia-cuda-runtime==$CUDART_VERSION)
  cupti_whl=$(fetch nvidia-cuda-cupti==$CUPTI_VERSION)
  log "extracting libtorch into $LT"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$PY" -m zipfile -e "$torch_whl" "$tmp/torch" >/dev/null 2>&1 || (cd "$tmp" && mkdir -p torch && cd torch && unzip -q "$torch_whl")
  rm -rf "$LT" && mkdir -p "$LT/lib"
  mv "$tmp/torch/torch/include" "$LT/include"
  for f in libtorch_cpu.so libtorch.so libc10.so libgomp.so.1 libshm.so; do
    [ -f "$tmp/torch/torch/lib/$f" ] && cp "$tmp/torch/torch/lib/$f" "$LT/lib/"
  done
  # libgomp may carry a hash suffix in the wheel (torch.libs/); take whatever is there.
  for f in "$tmp"/torch/torch.libs/libgomp*.so* "$tmp"/torch/torch/lib/libgomp*.so*; do
    [ -f "$f" ] && cp "$f" "$LT/lib/" && cp "$f" "$LT/lib/libgomp.so.1"
  done
  # Real files, not symlinks: libtorch_cpu.so finds these through its $ORIGIN rpath.
  "$PY" -m zipfile -e "$cudart_whl" "$tmp/cudart" >/dev/null
  "$PY" -m zipfile -e "$cupti_whl" "$tmp/cupti" >/dev/null
  find "$tmp/cudart" -name 'libcudart.so.13*' -exec cp {} "$LT/lib/libcudart.so.13" \;
  find "$tmp/cupti" -name 'libcupti.so.13*' -exec cp {} "$LT/lib/libcupti.so.13" \;
  rm -rf "$tmp"; trap - EXIT
  lacking=$(missing "$LT" "${LT_FILES[@]}")
  [ -z "$lacking" ] || die "the torch==$TORCH_VERSION / CUDA wheels left $LT without: ${lacking//$'\n'/ }"
  touch "$LT/.done-$TORCH_VERSION"
fi

# --- gloo headers ------------------------------------------------------------------------
# oats-c10d's shim includes libtorch's ProcessGroupGloo.hpp, which includes gloo's headers;
# the torch wheel ships neither them nor a gloo package, Debian's libgloo-dev has them. Only
# the headers are used (gloo's code is the copy inside libtorch_cpu.so): `apt-get download`
# fetches the .deb without installing anything or needing root, and it is unpacked here.
GLOO_DEB_VERSION=0.0~git20220518.5b14351-3
GLOO=$CACHE/gloo
if [ ! -f "$GLOO/.done-$GLOO_DEB_VERSION" ] || [ ! -s "$GLOO/include/gloo/context.h" ]; then
  command -v apt-get >/dev/null 2>&1 || die "apt-get is needed to fetch Debian's libgloo-dev headers (or install gloo's headers and set OATS_GLOO_INCLUDE)"
  log "fetching the gloo headers (Debian libgloo-dev $GLOO_DEB_VERSION)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  fetch_gloo() { (cd "$tmp" && apt-get download -q "$@" >/dev/null 2>&1); }
  # The pinned version; else refresh the package lists (as root) and take it or the candidate.
  fetch_gloo "libgloo-dev=$GLOO_DEB_VERSION" \
    || { [ "$(id -u)" = 0 ] && apt-get update -q >/dev/null 2>&1 && fetch_gloo "libgloo-dev=$GLOO_DEB_VERSION"; } \
    || { log "libgloo-dev $GLOO_DEB_VERSION is not in the apt sources: taking their version (untested here)"; fetch_gloo libgloo-dev; } \
    || die "apt-get download libgloo-dev failed"
  dpkg-deb -x "$tmp"/libgloo-dev_*.deb "$tmp/x"
  rm -rf "$GLOO" && mkdir -p "$GLOO"
  mv "$tmp/x/usr/include" "$GLOO/include"
  rm -rf "$tmp"; trap - EXIT
  [ -s "$GLOO/include/gloo/context.h" ] || die "libgloo-dev left no gloo/context.h in $GLOO/include"
  touch "$GLOO/.done-$GLOO_DEB_VERSION"
fi

# --- ONNX Runtime shared library ----------------------------------------------------
ORT_DIR=$CACHE/onnxruntime
ORT_LIB=$ORT_DIR/libonnxruntime.so.$ORT_VERSION
if [ ! -s "$ORT_LIB" ]; then
  ort_whl=$(fetch onnxruntime==$ORT_VERSION)
  log "extracting libonnxruntime.so.$ORT_VERSION"
  mkdir -p "$ORT_DIR"
  "$PY" - "$ort_whl" "$ORT_LIB" <<'PYEOF'
import sys, zipfile, shutil
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith("capi/libonnxruntime.so." + dest.rsplit(".so.", 1)[1]))
    with z.open(name) as src, open(dest + ".tmp", "wb") as out:
        shutil.copyfileobj(src, out)
PYEOF
  [ -s "$ORT_LIB.tmp" ] || die "empty libonnxruntime.so.$ORT_VERSION from $ort_whl"
  mv "$ORT_LIB.tmp" "$ORT_LIB"
fi

# --- Python venv for the ONNX checker tests -----------------------------------------
VENV=$CACHE/venv
VENV_PINS=("onnxruntime==$ORT_VERSION" "onnx==$ONNX_VERSION" "numpy==$NUMPY_VERSION"
  "maturin==$MATURIN_VERSION" "pytest==$PYTEST_VERSION")
venv_ready() { # the venv's python runs and has exactly the pinned versions installed
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "${VENV_PINS[@]}" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(any(version(n) != v for n, v in (s.split("==") for s in sys.argv[1:])))
PYEOF
}
if ! venv_ready; then
  log "installing ${VENV_PINS[*]} into $VENV"
  if ! "$VENV/bin/python" -c '' 2>/dev/null; then
    "$PY" -m venv --clear "$VENV" # absent or broken: start afresh
  fi
  "$VENV/bin/python" -m pip install -q --only-binary=:all: "${VENV_PINS[@]}"
  venv_ready || die "$VENV does not hold ${VENV_PINS[*]} after pip install"
fi

# --- System tools the tests use (only with --tests: ./oats test) ------------------------
# The demo needs none of them, and installing them would cost a fresh machine minutes of
# its 15-minute demo budget.
if [ "${1:-}" = --tests ]; then
# Debian packages, installed from the machine's configured apt source when missing and we are
# root: a C compiler (the C ABI's test program), valgrind (its memory checks), a JDK (the Java
# binding's test), and for ARM the aarch64 cross compiler with its C library and qemu-user
# (the runtime's tests run under emulation). Each entry: a file that proves it, its package.
SYSTEM_TOOLS=(
  "$(command -v cc || echo /usr/bin/cc):gcc"
  "$(command -v valgrind || echo /usr/bin/valgrind):valgrind"
  "$(command -v javac || echo /usr/bin/javac):default-jdk-headless"
  "/usr/bin/aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu"
  "/usr/aarch64-linux-gnu/lib/libc.so.6:libc6-dev-arm64-cross"
  "/usr/bin/qemu-aarch64:qemu-user"
)
apt_missing=()
for entry in "${SYSTEM_TOOLS[@]}"; do
  [ -e "${entry%%:*}" ] || apt_missing+=("${entry##*:}")
done
if [ ${#apt_missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing ${apt_missing[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${apt_missing[@]}" >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${apt_missing[@]}" >/dev/null; } \
      || die "apt-get install ${apt_missing[*]} failed: install them yourself (the binding and ARM tests need them)"
  else
    die "missing Debian packages: ${apt_missing[*]} (the binding and ARM tests need them)"
  fi
fi
# The Rust targets of the ARM checks (rustup downloads them from its own server).
RUST_TARGETS=(aarch64-unknown-linux-gnu aarch64-linux-android aarch64-apple-ios)
installed_targets=$(rustup target list --installed 2>/dev/null || true)
for t in "${RUST_TARGETS[@]}"; do
  if ! grep -qx "$t" <<<"$installed_targets"; then
    log "rustup target add $t"
    rustup target add "$t" >/dev/null || die "rustup target add $t failed"
  fi
done
fi

cat > "$CACHE/env.sh.tmp" <<ENVEOF
# written by scripts/setup.sh
export LIBTORCH="$LT"
export ORT_DYLIB_PATH="$ORT_LIB"
export OATS_PYTHON="$VENV/bin/python"
export OATS_GLOO_INCLUDE="$GLOO/include"
export LD_LIBRARY_PATH="$LT/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
ENVEOF
mv "$CACHE/env.sh.tmp" "$CACHE/env.sh"
log "ready: $CACHE/env.sh"
