#!/usr/bin/env bash
# The whole test suite (called by ./oats test after set-up; .ci/run calls ./oats test).
# Arguments go to the main `cargo test` (e.g. a test-name filter, or `-- --nocapture`).
#
# Order, cheapest verdict first (a passing run costs the same in any order):
#   1. cargo fmt --check                      seconds, no compilation
#   2. the tools of the set-up are there      seconds (ORT library, venv python with onnx)
#   3. the runtime never depends on libtorch  seconds (cargo tree, default features and `ort`)
#   4. clippy -D warnings                     check-only build: no codegen, no test run
#   5. the workspace tests, $OATS_FEATURES    the full build and the long part
#   6. the runtime tests, default features    what integrators build (no `ort`)
#   7. the Python module: maturin + pytest    python/tests
#   8. aarch64: runtime tests and the C program under qemu, the Android staticlib (built
#      beside them), an iOS check
# Every step prints its wall time when it ends, and the run ends with the table of them
# (DESIGN.md, "Build time", has the breakdown and what each cut saved).
#
# Steps 6 and 7 build one crate each, and cargo resolves a one-crate build's dependency
# features on its own: without workspace-hack/ they would compile tract and the rest a
# second and a third time. Step 6 fails if it compiles any registry crate again.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OATS_FEATURES:?not set: run the suite through ./oats test, which sets it}"
# Wall time per step: each step() ends the one before it; the table prints on exit, pass or fail.
declare -a step_names=() step_secs=()
step_name='' step_start=$SECONDS run_start=$SECONDS
step_end() {
  [ -n "$step_name" ] || return 0
  local took=$((SECONDS - step_start))
  step_names+=("$step_name") step_secs+=("$took")
  printf '   (%s: %d s)\n' "$step_name" "$took" >&2
  step_name=''
}
step() {
  step_end
  step_name=$*
  step_start=$SECONDS
  printf '== test: %s\n' "$*" >&2
}
timings_printed=''
timings() {
  [ -z "$timings_printed" ] || return 0
  timings_printed=1
  step_end
  printf '== test: wall time per step (%d s in all)\n' $((SECONDS - run_start)) >&2
  local i
  for i in "${!step_names[@]}"; do
    printf '%6d s  %s\n' "${step_secs[$i]}" "${step_names[$i]}" >&2
  done
}
trap timings EXIT
# Diagnostic only: never fails the run (under set -e, a failing du would end it silently).
disk() {
  local used=absent free=unknown
  if [ -d target ]; then used=$(du -sh target 2>/dev/null | cut -f1) || used=unknown; fi
  free=$(df -h --output=avail . 2>/dev/null | tail -n 1 | tr -d ' ') || free=unknown
  printf '   disk: target/ %s, %s free\n' "$used" "$free" >&2
}
fail() { printf 'FAIL: %s\n' "$*" >&2; disk; exit 1; }

# A fresh clone in CI builds every target once and never rebuilds: incremental state
# (~1.6 GB) and debug info (~38 % of each of the ~60 test binaries) are disk it cannot spare.
# A CI run died with "No space left on device" linking a test at 975 s; a full fresh build
# holds ~7 GB of target/ with both. Panics still name file:line (track_caller, not debug
# info). Local runs keep the profile of Cargo.toml, so they do not rebuild everything.
if [ -n "${CI:-}" ]; then
  export CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=0
fi
disk

step "cargo fmt --all --check"
cargo fmt --all --check

# The set-up (scripts/setup.sh, run by ./oats just before) has installed ONNX Runtime and the
# checker's venv, so under this script a missing tool is a defect: the tests that need one
# fail instead of skipping (runtime/tests/it/common/mod.rs, export/tests/it/e2e.rs: tool_missing).
export OATS_REQUIRE_TOOLS=1
step "tools of the set-up"
[ -s "${ORT_DYLIB_PATH:-}" ] \
  || fail "ORT_DYLIB_PATH='${ORT_DYLIB_PATH:-}' is not a non-empty file (scripts/setup.sh installs it; ./oats test runs it)"
[ -x "${OATS_PYTHON:-}" ] \
  || fail "OATS_PYTHON='${OATS_PYTHON:-}' is not an executable (scripts/setup.sh makes the venv; ./oats test runs it)"
for tool in cc valgrind javac java aarch64-linux-gnu-gcc qemu-aarch64; do
  command -v "$tool" >/dev/null \
    || fail "$tool is missing: the binding and ARM tests need it (scripts/setup.sh installs it; ./oats test runs it)"
done
targets=$(rustup target list --installed) || fail "rustup target list failed"
for t in aarch64-unknown-linux-gnu aarch64-linux-android aarch64-apple-ios; do
  grep -qx "$t" <<<"$targets" \
    || fail "the Rust target $t is not installed (scripts/setup.sh adds it; ./oats test runs it)"
done
"$OATS_PYTHON" -c 'import numpy, onnx, onnxruntime, maturin, pytest' \
  || fail "$OATS_PYTHON cannot import numpy, onnx, onnxruntime, maturin and pytest (delete ${OATS_CACHE:-~/.cache/oats}/venv and rerun ./oats test)"

# The edge runtime must never link libtorch: its normal dependency tree, with the default
# features and with `ort`, must not hold tch or torch-sys. Fails closed: cargo tree's output
# is captured with its exit status checked (no pipe whose early close could mask a failure),
# and an empty or rootless tree is a failure, not a pass.
for features in default ort; do
  step "oats-runtime ($features features) does not depend on tch/torch-sys"
  args=(-p oats-runtime -e normal --prefix none)
  [ "$features" = default ] || args+=(--features "$features")
  tree=$(cargo tree "${args[@]}") || fail "cargo tree ${args[*]} failed"
  grep -qE '^oats-runtime v' <<<"$tree" || fail "cargo tree ${args[*]} printed no oats-runtime tree"
  if [ "$features" = ort ]; then
    grep -qE '^ort v' <<<"$tree" || fail "cargo tree ${args[*]} shows no ort: the feature did not apply"
  fi
  if grep -E '^(tch|torch-sys) v' <<<"$tree"; then
    fail "oats-runtime ($features features) depends on tch/torch-sys (above)"
  fi
  # The command-line parser is the `cli` feature's, not the library's (anyhow is too, but
  # tract's own errors bring it into every tree, so only clap can be checked here).
  if grep -E '^clap v' <<<"$tree"; then
    fail "oats-runtime ($features features) links clap (above): it belongs behind the cli feature"
  fi
done

# oats-graph is what the runtime will derive configurations with: no tch either.
step "oats-graph does not depend on tch/torch-sys"
tree=$(cargo tree -p oats-graph -e normal --prefix none) || fail "cargo tree -p oats-graph failed"
grep -qE '^oats-graph v' <<<"$tree" || fail "cargo tree -p oats-graph printed no oats-graph tree"
if grep -E '^(tch|torch-sys|oats-train) v' <<<"$tree"; then
  fail "oats-graph depends on tch/torch-sys/oats-train (above)"
fi

# One libtorch thread per test: cargo runs tests in parallel, and OpenMP threads that
# oversubscribe 2 cores spin-wait each other into 10-50x slowdowns (measured).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# The feature set of the tests, so clippy checks what the tests build (and every target).
# Clippy stays a check-only pass of its own. Run as the workspace build's compiler instead
# (clippy-driver as RUSTC_WORKSPACE_WRAPPER, one compilation for both) it cost more than it
# saved: measured on fresh clones, 562 s for the one build against 112 + 360 s for the two.
step "cargo clippy --workspace --all-targets --features $OATS_FEATURES -- -D warnings"
cargo clippy --workspace --all-targets --features "$OATS_FEATURES" -- -D warnings

step "cargo test --workspace --features $OATS_FEATURES $*"
cargo test --workspace --features "$OATS_FEATURES" "$@"

disk
step "cargo test -p oats-runtime (default features: what integrators build)"
# Its build must reuse the workspace build's dependencies (workspace-hack/): a registry crate
# compiled here means a dependency feature the hack does not pin yet.
build_log=$(cargo test -p oats-runtime --no-run 2>&1) || { printf '%s\n' "$build_log" >&2; fail "building the runtime's tests (default features)"; }
printf '%s\n' "$build_log" >&2
recompiled=$(grep -E '^ *Compiling [^ ]+ v[^ ]+$' <<<"$build_log" || true)
[ -z "$recompiled" ] || fail "the runtime's default-feature build compiled these registry crates again:
$recompiled
add the features the workspace build gives them to workspace-hack/Cargo.toml (cargo tree -e features -i CRATE shows both sides)"
cargo test -p oats-runtime
# Without the default `image` feature (callers that hand over NCHW buffers) the runtime must
# build too: the C ABI builds below compile it exactly so (oats-ffi takes it without default
# features) for aarch64 Linux, Android and iOS.

# The Python bindings: the `oats` wheel built into the set-up's venv (maturin develop: the
# workspace's target/, dev profile), then its tests with pytest.
step "python: maturin develop (oats wheel into $(dirname "$(dirname "$OATS_PYTHON")")) + pytest"
venv=$(dirname "$(dirname "$OATS_PYTHON")")
(cd python && VIRTUAL_ENV=$venv PATH="$venv/bin:$PATH" "$venv/bin/maturin" develop --quiet) \
  || fail "building the oats Python module failed"
"$OATS_PYTHON" -m pytest -q python/tests

# ARM: three builds that share no compiled crate with the x86-64 ones.
# - aarch64 Linux: the runtime's tests, run under qemu-aarch64 on a phone-class core
#   (Cortex-A53; qemu 7.2 has no A55): opening, integrity, deriving from the package, and the
#   pretrained model's classes and reference logits; default features: tract, the ARM
#   backend. Then the C ABI, and a C program on it.
# - Android: the C ABI as a staticlib (the NDK links it on the integrator's side; tract's
#   assembly kernels are assembled here with the GNU cross gcc), under the `build-only`
#   profile (Cargo.toml): nothing runs it here, so nothing is optimised. It builds in the
#   background beside the aarch64 Linux one (its profile has build directories of its own,
#   so the two take no common lock); the builds are CPU-bound, so beside costs about what
#   after would. Starting all ARM builds at the start instead, even at nice 19, slowed the
#   x86-64 steps by 220 s and still left 321 s of ARM builds after them.
# - iOS: a type check of the C ABI. Without Apple's toolchain, tract's build script is given
#   the GNU cross gcc as its assembler and a stand-in SDK root; nothing is linked, so this
#   proves the Rust compiles for iOS, not that the library runs there. After the aarch64
#   Linux build, whose host build scripts and proc macros it reuses.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export QEMU_CPU=${QEMU_CPU:-cortex-a53}
disk
scratch=$(mktemp -d)
android_pid=''
# On any exit: stop the background build (its own process group), drop the scratch files.
trap '[ -z "$android_pid" ] || kill -- -"$android_pid" 2>/dev/null; rm -rf "$scratch"; timings' EXIT
android_log=$scratch/android.log
set -m # job control: the background build gets a process group of their own
CC_aarch64_linux_android=aarch64-linux-gnu-gcc AR_aarch64_linux_android=aarch64-linux-gnu-ar \
  cargo rustc -p oats-ffi --target aarch64-linux-android --profile build-only --lib \
  --crate-type staticlib >"$android_log" 2>&1 &
android_pid=$!
set +m

step "aarch64 Linux: runtime tests under qemu-aarch64 ($QEMU_CPU); the Android staticlib beside"
cargo test -p oats-runtime --target aarch64-unknown-linux-gnu --test it -- \
  model:: integrity:: derive:: pretrained::
cargo build -p oats-ffi --target aarch64-unknown-linux-gnu

step "aarch64 iOS: cargo check of the C ABI"
ios_sdk=$(mktemp -d)
SDKROOT=$ios_sdk CRATE_CC_NO_DEFAULTS=1 IPHONEOS_DEPLOYMENT_TARGET=13.0 \
  CC_aarch64_apple_ios=aarch64-linux-gnu-gcc AR_aarch64_apple_ios=aarch64-linux-gnu-ar \
  cargo check -p oats-ffi --target aarch64-apple-ios
rmdir "$ios_sdk"

step "aarch64 Linux: the C ABI program under qemu-aarch64, against the same program on x86-64"
asset=assets/pretrained/oats-small-fmnist
# The reference bundle's 16 validation images as raw native-order f32 (what the program reads).
"$OATS_PYTHON" - "$asset/reference.safetensors" "$scratch/images.f32" <<'PYEOF'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
t = json.loads(raw[8 : 8 + n])["input"]
a, b = t["data_offsets"]
open(sys.argv[2], "wb").write(raw[8 + n + a : 8 + n + b])
PYEOF
x86_lib=$(dirname "$(ls target/debug/deps/liboats.so target/debug/liboats.so 2>/dev/null | head -n 1)")
[ -n "$x86_lib" ] || fail "no x86-64 liboats.so from the workspace tests"
arm_lib=target/aarch64-unknown-linux-gnu/debug
cflags=(-std=c11 -Wall -Wextra -Werror -O1 -I ffi/include ffi/tests/c/oats_smoke.c -loats -lpthread -lm)
cc "${cflags[@]}" -L "$x86_lib" -Wl,-rpath,"$PWD/$x86_lib" -o "$scratch/smoke-x86"
aarch64-linux-gnu-gcc "${cflags[@]}" -L "$arm_lib" -Wl,-rpath,"$PWD/$arm_lib" -o "$scratch/smoke-arm"
arm() { qemu-aarch64 -L /usr/aarch64-linux-gnu "$scratch/smoke-arm" "$@"; }
for cfg in "0.15 1" "0 0.5" "1 0.75"; do
  # shellcheck disable=SC2086 # λ and width as two arguments
  x86_out=$("$scratch/smoke-x86" classify "$asset" "$scratch/images.f32" 16 $cfg) || fail "x86-64 classify $cfg"
  # shellcheck disable=SC2086
  arm_out=$(arm classify "$asset" "$scratch/images.f32" 16 $cfg) || fail "aarch64 classify $cfg"
  [ "$x86_out" = "$arm_out" ] || fail "aarch64 classifies differently from x86-64 at $cfg:
$arm_out
--- x86-64:
$x86_out"
done
arm errors "$asset" "$scratch/images.f32" 16 >/dev/null || fail "aarch64: the C program's error cases"
arm threads "$asset" "$scratch/images.f32" 16 >/dev/null || fail "aarch64: the C program's threads"

step "aarch64 Android: the C ABI as a staticlib (liboats.a; waiting for the background build)"
android_rc=0
wait "$android_pid" || android_rc=$?
android_pid=''
cat "$android_log" >&2
[ "$android_rc" -eq 0 ] || fail "the Android build failed (above)"
[ -s target/aarch64-linux-android/build-only/liboats.a ] \
  || fail "no target/aarch64-linux-android/build-only/liboats.a after the Android build"

disk
timings
printf '== test: all passed\n' >&2
