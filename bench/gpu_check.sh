#!/usr/bin/env bash
# bench/gpu_check.sh -- the whole GPU check of gmmfast in ONE call of a prepared script.
#
#   bash bench/gpu_check.sh "$OUT"              # on the GPU machine, from the repository root
#   bash bench/gpu_check.sh --dry-run /tmp/out  # anywhere: every step that needs no GPU
#
# A GPU session is lent a machine for about 15 minutes of device time in all (start-up
# included), so everything runs from one command: with the device tool,
#   run(command='bash bench/gpu_check.sh "$OUT"', timeout_s=560)
# The script keeps to its own budget (GPU_CHECK_BUDGET_S, default 480 s): every step runs
# under `timeout`, with the smaller of its own limit and what is left of the budget, and the
# steps come in order of value, so that running out of time loses the least. A failing
# step never stops the script (no `set -e`); only "torch sees no CUDA device" ends it early.
#
# Steps (limit in seconds; the budget cuts the later ones when earlier ones run long):
#   01-env          45  nvidia-smi (name, driver, clocks), nvcc/cmake/ninja/compute-sanitizer
#                       versions, python/torch versions, torch.cuda.get_device_properties
#                       -> $OUT/env.txt. No CUDA device visible to torch: stop here.
#   02-build       180  pip install --no-build-isolation --no-deps -v . with GMMFAST_CUDA=ON,
#                       only the present GPU's architecture (CMAKE_ARGS=-DGMMFAST_CUDA_
#                       ARCHITECTURES=<major><minor>-real, read from torch), nproc jobs.
#   03-import       30  gmmfast.build_info(): cuda_compiled and cuda_available must be True
#                       (dry run: cuda_compiled). If 02/03 fail, the GPU steps are skipped.
#   04-cuda-tests  200  pytest of tests/test_cuda.py, tests/test_cuda_per_sample.py,
#                       tests/test_torch_estimator.py and the CUDA cases of the nn/per-sample
#                       tests (all but the torch.compile tests) -> $OUT/cuda-tests.xml
#   05-memcheck     90  compute-sanitizer memcheck over 20 small CUDA tests (log_prob,
#                       em_stats, finalize, grad_x, per-sample ops), gmmfast kernels only
#   06-racecheck    75  the same tool with racecheck over 10 of them
#   07-synccheck    60  synccheck over those 10 (06/07 skipped when 05 timed out or the
#                       sanitizer does not support the device)
#   08-bench-full64 75  bench/bench_gpu.py --cases full64 (the headline case)
#   09-bench-mdn    75  bench/bench_mdn.py --device cuda -> $OUT/mdn-gpu-<device>.json
#   10-bench-diag  120  bench/bench_gpu.py --cases diag16,diag128; 08 and 10 are merged into
#                       $OUT/gpu-<device>.json (bench_gpu.py's --json format)
#   11-compile-tests 120 the torch.compile tests of test_cuda*.py (slow: inductor compiles)
#
# What comes back in $OUT (at most 8 files; the device tool returns no more):
#   summary.txt    one line per step (status, exit code, seconds, limit, note), the test
#                  counts, the sanitizers' ERROR SUMMARY lines, the benchmark tables, and
#                  the tail of the log of every failed step. Rewritten after every step, so
#                  it is there even if the call is cut off. Start reading here.
#   summary.json   the same, machine-readable
#   env.txt        step 01's output
#   cuda-tests.xml the junit XML of step 04
#   gpu-<device>.json, mdn-gpu-<device>.json   the benchmark results
#   logs.tar.gz    logs/NN-<step>.log for every step (and compile-tests.xml); re-packed
#                  after every step
# Statuses: ok, failed (non-zero exit), timeout (killed at its limit), skipped (with why),
# interrupted (the script itself was signalled during the step).
# Exit status: 0 when no step failed or timed out, 1 otherwise, 2 when stopped early.
#
# Environment: PYTHON (default python3: on the GPU machines the one with torch),
# GPU_CHECK_BUDGET_S (480), GPU_CHECK_BUILD_S (180: the build step's limit),
# GPU_CHECK_CUDA_ARCH (override the architecture, e.g. 90-real; the dry run's default),
# GPU_CHECK_DRY_RUN=1 (same as --dry-run).
#
# Dry run (no GPU): the same control flow and summary; the build really compiles the CUDA
# kernels with nvcc (for GPU_CHECK_CUDA_ARCH, default 90-real); the CUDA tests run and must
# skip; the sanitizer test selection runs without the sanitizer (checks that the test ids
# exist: step 07b-sanitizer-ids); the benchmarks' exact command lines are parsed by their own
# argparse, plus --help (step 08-bench-args). Locally, in a throwaway copy of a virtualenv:
#   PYTHON=/path/to/venv/bin/python bash bench/gpu_check.sh --dry-run /tmp/gpu_out
# (the build installs gmmfast into that Python's environment; about 2 minutes on 2 cores).
#
# The build goes to build/gpu-check (a folder of its own, so no CMake cache of a CPU build
# interferes); a second call on a still-warm machine rebuilds incrementally.

set -u -o pipefail

# ------------------------------------------------------------------------------ test selections

# The CUDA cases outside test_cuda*.py (grep -n cuda tests/*.py): the nn modules' CPU/GPU
# parity, the per-sample op's device support, build_info. test_mdn.py and test_torch.py
# have no CUDA case.
CUDA_TESTS=(
  tests/test_cuda.py
  tests/test_cuda_per_sample.py
  tests/test_torch_estimator.py
  tests/test_fisher.py::test_cuda_matches_cpu
  tests/test_nn_classifier.py::test_cuda_matches_cpu
  tests/test_mixture_conv.py::test_float32_and_device
  tests/test_per_sample.py::test_device_support
  tests/test_per_sample.py::test_cuda_op_raises_and_auto_backend_falls_back
  tests/test_ops.py::test_build_info
)
COMPILE_TESTS=(tests/test_cuda.py tests/test_cuda_per_sample.py)

# Small shapes, every kernel family once: estep (dense with D > 64, diag, log_resp), em_stats
# (dense, tied with D > 64, diag with K > 64), grad_x (dense, diag), finalize (Cholesky),
# per-sample (a thread per row, a warp per row). racecheck and synccheck take these ten.
SAN_TESTS_SHORT=(
  "tests/test_cuda.py::test_log_prob_edge_shapes[full-N257-D70-K3]"
  "tests/test_cuda.py::test_log_prob_matches_cpu[log_resp-diag-torch.float32]"
  "tests/test_cuda.py::test_em_stats_matches_cpu[weighted-full-torch.float64]"
  "tests/test_cuda.py::test_em_stats_edge_shapes[tied-N257-D70-K3]"
  "tests/test_cuda.py::test_em_stats_edge_shapes[diag-N400-D3-K130]"
  "tests/test_cuda.py::test_autograd_matches_cpu[sample-full-torch.float32]"
  "tests/test_cuda.py::test_autograd_matches_cpu[weighted-diag-torch.float64]"
  "tests/test_cuda.py::test_finalize_matches_cpu[torch.float64-full]"
  "tests/test_cuda_per_sample.py::test_matches_cpu[diag-joint-torch.float32-mask-None-small]"
  "tests/test_cuda_per_sample.py::test_matches_cpu[full-joint-torch.float64-mask-bool-wide]"
)
# memcheck: those plus ten more (spherical/tied, signed responsibilities, finalize of
# diag and of a failing component, NaN rows, the other per-sample forms and mappings).
SAN_TESTS=(
  "${SAN_TESTS_SHORT[@]}"
  "tests/test_cuda.py::test_log_prob_edge_shapes[diag-N257-D70-K3]"
  "tests/test_cuda.py::test_em_stats_matches_cpu[unweighted-spherical-torch.float32]"
  "tests/test_cuda.py::test_em_stats_edge_shapes[full-N65-D2-K3]"
  "tests/test_cuda.py::test_em_stats_given_signed_resp[full]"
  "tests/test_cuda.py::test_finalize_matches_cpu[torch.float32-diag]"
  "tests/test_cuda.py::test_finalize_first_failing_component[full]"
  "tests/test_cuda.py::test_nonfinite_rows[diag]"
  "tests/test_cuda_per_sample.py::test_matches_cpu[correlated2d-joint-torch.float32-mask-float-small]"
  "tests/test_cuda_per_sample.py::test_matches_cpu[diag-per_dim-torch.float32-mask-None-wide]"
  "tests/test_cuda_per_sample.py::test_both_row_mappings_match_cpu[isotropic-joint-torch.float32-warp-per-row]"
)

# Benchmark command lines (options from bench_gpu.py's parse_args and bench_mdn.py's _parse).
BENCH_FULL_ARGS=(--cases full64)
BENCH_DIAG_ARGS=(--cases diag16,diag128)
MDN_ARGS=(--device cuda)

# ------------------------------------------------------------------------------ bookkeeping

S_NAME=(); S_STATUS=(); S_RC=(); S_SECS=(); S_LIMIT=(); S_NOTE=()
ABORTED=
COMPLETE=false

json_str() {
  local s=$1
  s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\t'/\\t}; s=${s//$'\r'/}
  printf '"%s"' "$s"
}

# junit_counts FILE -> "N tests: P passed, F failed, E errors, S skipped"
junit_counts() {
  local f=$1 line t fl e s
  [ -s "$f" ] || { echo "no junit xml"; return; }
  line=$(grep -o '<testsuite [^>]*>' "$f" | head -n 1)
  attr() { printf '%s' "$line" | sed -n "s/.* $1=\"\\([0-9]*\\)\".*/\\1/p"; }
  t=$(attr tests); fl=$(attr failures); e=$(attr errors); s=$(attr skipped)
  echo "${t:-?} tests: $(( ${t:-0} - ${fl:-0} - ${e:-0} - ${s:-0} )) passed, ${fl:-?} failed, ${e:-?} errors, ${s:-?} skipped"
}

elapsed() { echo $(( SECONDS - START )); }

write_summary() {
  local i n=${#S_NAME[@]} el dev arch
  el=$(elapsed)
  # shellcheck disable=SC1090
  . "$STATE"
  dev=${DEVICE_NAME:-none}; arch=${CUDA_ARCH:-?}
  {
    echo "gmmfast GPU check (bench/gpu_check.sh), mode: $MODE"
    echo "device: $dev (compute capability ${CC_MAJOR:-?}.${CC_MINOR:-?}, ${SM_COUNT:-?} SMs), built for: $arch"
    echo "started $STARTED_AT, elapsed ${el} s of a ${BUDGET} s budget"
    if [ -n "$ABORTED" ]; then echo "STOPPED EARLY: $ABORTED"
    elif [ "$COMPLETE" = true ]; then echo "finished"
    else echo "INCOMPLETE (still running, or cut off)"; fi
    echo
    printf '%-18s %-11s %4s %6s %6s  %s\n' step status rc secs limit note
    for ((i = 0; i < n; i++)); do
      printf '%-18s %-11s %4s %6s %6s  %s\n' "${S_NAME[$i]}" "${S_STATUS[$i]}" "${S_RC[$i]}" \
        "${S_SECS[$i]}" "${S_LIMIT[$i]}" "${S_NOTE[$i]}"
    done
    local bad=0
    for ((i = 0; i < n; i++)); do
      case ${S_STATUS[$i]} in failed|timeout|interrupted) bad=$((bad + 1)) ;; esac
    done
    echo
    if [ -n "$ABORTED" ]; then echo "RESULT: stopped early ($ABORTED)"
    elif [ "$bad" = 0 ]; then echo "RESULT: no step failed or timed out"
    else echo "RESULT: $bad step(s) failed or timed out"; fi
    if [ -s "$WORK/bench-report.md" ]; then
      echo; echo "== bench_gpu.py (merged)"; cat "$WORK/bench-report.md"
    fi
    if [ -s "$LOGS/09-bench-mdn.log" ] && grep -q '^|' "$LOGS/09-bench-mdn.log"; then
      echo; echo "== bench_mdn.py --device cuda"; grep -E '^(\||GPU:)' "$LOGS/09-bench-mdn.log"
    fi
    for ((i = 0; i < n; i++)); do
      case ${S_STATUS[$i]} in
        failed|timeout|interrupted)
          echo; echo "== tail of logs/${S_NAME[$i]}.log (${S_STATUS[$i]})"
          tail -n 25 "$LOGS/${S_NAME[$i]}.log" 2>/dev/null | cut -c1-300 ;;
      esac
    done
    echo
    echo "files: summary.txt summary.json env.txt cuda-tests.xml gpu-<device>.json mdn-gpu-<device>.json"
    echo "       logs.tar.gz (logs/NN-<step>.log per step; tar -xzf logs.tar.gz)"
  } >"$OUT/summary.txt.tmp" && mv "$OUT/summary.txt.tmp" "$OUT/summary.txt"
  {
    printf '{\n  "mode": %s,\n' "$(json_str "$MODE")"
    printf '  "complete": %s,\n' "$COMPLETE"
    if [ -n "$ABORTED" ]; then printf '  "aborted": %s,\n' "$(json_str "$ABORTED")"
    else printf '  "aborted": null,\n'; fi
    printf '  "started": %s,\n  "budget_s": %s,\n  "elapsed_s": %s,\n' "$(json_str "$STARTED_AT")" "$BUDGET" "$el"
    printf '  "device": {"name": %s, "compute_capability": %s, "sm_count": %s, "cuda_arch": %s},\n' \
      "$(json_str "$dev")" "$(json_str "${CC_MAJOR:-?}.${CC_MINOR:-?}")" "$(json_str "${SM_COUNT:-?}")" "$(json_str "$arch")"
    printf '  "steps": ['
    for ((i = 0; i < n; i++)); do
      [ "$i" = 0 ] || printf ','
      printf '\n    {"name": %s, "status": %s, "rc": %s, "seconds": %s, "limit_s": %s, "log": %s, "note": %s}' \
        "$(json_str "${S_NAME[$i]}")" "$(json_str "${S_STATUS[$i]}")" "${S_RC[$i]/-/null}" \
        "${S_SECS[$i]/-/null}" "${S_LIMIT[$i]/-/null}" "$(json_str "logs/${S_NAME[$i]}.log")" \
        "$(json_str "${S_NOTE[$i]}")"
    done
    printf '\n  ]\n}\n'
  } >"$OUT/summary.json.tmp" && mv "$OUT/summary.json.tmp" "$OUT/summary.json"
  tar -czf "$OUT/logs.tar.gz.tmp" -C "$WORK" logs 2>/dev/null && mv "$OUT/logs.tar.gz.tmp" "$OUT/logs.tar.gz"
}

record() {  # name status rc secs limit note
  S_NAME+=("$1"); S_STATUS+=("$2"); S_RC+=("$3"); S_SECS+=("$4"); S_LIMIT+=("$5"); S_NOTE+=("$6")
  printf '[%4ss] %-18s %-8s rc=%-4s %4ss  %s\n' "$(elapsed)" "$1" "$2" "$3" "$4" "$6"
  write_summary
}

skip() {  # name reason
  : >"$LOGS/$1.log"
  echo "skipped: $2" >"$LOGS/$1.log"
  record "$1" skipped - - - "$2"
}

LAST_STATUS=
# run_step NAME CAP FUNCTION: runs the exported shell function under timeout with the
# smaller of CAP and the budget left; the note comes from note_<FUNCTION> if defined.
run_step() {
  local name=$1 cap=$2 fn=$3 left t rc t0 secs status note log=$LOGS/$1.log
  left=$(( BUDGET - $(elapsed) - RESERVE ))
  if [ "$left" -lt "$MIN_STEP" ]; then
    skip "$name" "budget exhausted (${left} s left)"; LAST_STATUS=skipped; return
  fi
  t=$(( cap < left ? cap : left ))
  printf '[%4ss] %-18s running (limit %s s)\n' "$(elapsed)" "$name" "$t"
  {
    echo "### $name: $fn (limit $t s), $(date -u +%H:%M:%SZ)"
  } >"$log"
  t0=$SECONDS
  # In the background and waited for, so that a signal to this script interrupts the wait
  # and on_signal can end the step: timeout leads a process group of its own.
  timeout --kill-after=10 "$t" bash "$SELF" --step "$fn" >>"$log" 2>&1 </dev/null &
  STEP_PID=$! STEP_NAME=$name STEP_T0=$t0 STEP_LIMIT=$t
  wait "$STEP_PID"
  rc=$?
  STEP_PID=
  secs=$(( SECONDS - t0 ))
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status=failed ;;
  esac
  echo "### exit status $rc after $secs s" >>"$log"
  note=
  if declare -F "note_$fn" >/dev/null; then note=$("note_$fn" "$log" "$rc"); fi
  [ "$status" = timeout ] && note="killed after $t s; $note"
  record "$name" "$status" "$rc" "$secs" "$t" "$note"
  LAST_STATUS=$status
}

finish() {
  local code=${1:-0}
  trap - EXIT TERM INT
  write_summary
  echo
  cat "$OUT/summary.txt"
  rm -rf "$WORK"
  exit "$code"
}
STEP_PID=
on_signal() {
  ABORTED="interrupted by a signal after $(elapsed) s"
  if [ -n "$STEP_PID" ]; then
    kill -TERM -- "-$STEP_PID" 2>/dev/null
    sleep 2
    kill -KILL -- "-$STEP_PID" 2>/dev/null
    echo "### interrupted by a signal" >>"$LOGS/$STEP_NAME.log"
    record "$STEP_NAME" interrupted - $(( SECONDS - STEP_T0 )) "$STEP_LIMIT" "the script was signalled during this step"
  fi
  finish 2
}

# ------------------------------------------------------------------------------ steps

find_tool() {  # name: PATH, then the CUDA toolkit's bin folders
  local d
  command -v "$1" 2>/dev/null && return 0
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin /opt/nvidia/*/bin; do
    [ -x "$d/$1" ] && { echo "$d/$1"; return 0; }
  done
  return 1
}

step_env() {
  {
    echo "== date / host"
    date -u; uname -a; echo "cpus: $(nproc)"; free -g 2>/dev/null | head -n 2
    echo; echo "== nvidia-smi"
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi --query-gpu=index,name,driver_version,compute_cap,memory.total,pci.bus_id --format=csv
      nvidia-smi --query-gpu=clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.limit,temperature.gpu,persistence_mode,mig.mode.current --format=csv
      nvidia-smi
    else
      echo "nvidia-smi not found"
    fi
    echo; echo "== tools"
    local nvcc cs
    if nvcc=$(find_tool nvcc); then echo "nvcc: $nvcc"; "$nvcc" --version; else echo "nvcc not found"; fi
    if cs=$(find_tool compute-sanitizer); then echo "compute-sanitizer: $cs"; "$cs" --version | head -n 3
    else echo "compute-sanitizer not found"; fi
    cmake --version 2>/dev/null | head -n 1 || echo "cmake not on PATH"
    ninja --version 2>/dev/null | sed 's/^/ninja /' || echo "ninja not on PATH"
    g++ --version 2>/dev/null | head -n 1
    echo; echo "== python ($PY)"
    command -v "$PY"; "$PY" --version
    "$PY" -m pip list 2>/dev/null | grep -i -E '^(torch|numpy|scipy|scikit[-_]learn|scikit[-_]build[-_]core|pybind11|pytest|pytest[-_]timeout|cmake|ninja) ' || true
    echo; echo "== torch"
  } 2>&1
  "$PY" - "$STATE" <<'EOF' 2>&1
import shlex, sys
state = sys.argv[1]
try:
    import torch
except Exception as exc:  # no torch: the GPU steps cannot run
    print("torch import failed:", exc)
    open(state, "a").write("CUDA_OK=0\n")
    sys.exit(0)
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("arch list:", torch.cuda.get_arch_list())
ok = torch.cuda.is_available() and torch.cuda.device_count() > 0
print("cuda available:", torch.cuda.is_available(), "devices:", torch.cuda.device_count())
lines = [f"CUDA_OK={int(ok)}"]
if ok:
    for i in range(torch.cuda.device_count()):
        print(f"device {i}:", torch.cuda.get_device_properties(i))
    p = torch.cuda.get_device_properties(0)
    lines += [f"DEVICE_NAME={shlex.quote(p.name)}", f"CC_MAJOR={p.major}", f"CC_MINOR={p.minor}",
              f"SM_COUNT={p.multi_processor_count}"]
open(state, "a").write("\n".join(lines) + "\n")
EOF
}
note_step_env() {
  (. "$STATE"; echo "torch sees a CUDA device: $([ "${CUDA_OK:-0}" = 1 ] && echo "yes, ${DEVICE_NAME:-?}" || echo no)")
}

step_build() {
  # shellcheck disable=SC1090
  . "$STATE"
  local nvcc arch
  if nvcc=$(find_tool nvcc); then
    export PATH="$(dirname "$nvcc"):$PATH" CUDACXX="$nvcc"
  else
    echo "nvcc not found (PATH, /usr/local/cuda*/bin): cannot build gmmfast._cuda"; return 1
  fi
  if [ -n "${GPU_CHECK_CUDA_ARCH:-}" ]; then arch=$GPU_CHECK_CUDA_ARCH
  elif [ -n "${CC_MAJOR:-}" ]; then arch="${CC_MAJOR}${CC_MINOR}-real"
  else arch=90-real; fi
  echo "CUDA_ARCH=$arch" >>"$STATE"
  # How the defines reach CMake. pyproject.toml's [tool.scikit-build.cmake.define] reads
  # GMMFAST_CUDA from the environment (so GMMFAST_CUDA=ON below). The architecture goes in
  # CMAKE_ARGS, which every scikit-build-core release reads (shlex-split, appended to the
  # configure command after its own defines; only CMAKE_BUILD_TYPE and
  # CMAKE_INSTALL_PREFIX are dropped from it). SKBUILD_CMAKE_DEFINE would work too on
  # scikit-build-core 1.1 (read here in settings/sources.py: dict settings from several
  # sources are merged), but its ';'-separated value is also the list separator of CMake
  # architectures, and older releases replaced the pyproject table instead of merging it.
  # GMMFAST_CUDA_ARCHITECTURES feeds CMAKE_CUDA_ARCHITECTURES syntax (cuda/CMakeLists.txt).
  # CMAKE_BUILD_PARALLEL_LEVEL is read by `cmake --build` itself (Ninja and Makefiles).
  export GMMFAST_CUDA=ON
  export CMAKE_ARGS="-DGMMFAST_CUDA_ARCHITECTURES=$arch"
  export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
  echo "nvcc=$nvcc GMMFAST_CUDA=$GMMFAST_CUDA CMAKE_ARGS=$CMAKE_ARGS CMAKE_BUILD_PARALLEL_LEVEL=$CMAKE_BUILD_PARALLEL_LEVEL"
  # A build folder of its own: no CMake cache of an earlier CPU build gets in the way, and a
  # warm machine's second call rebuilds incrementally.
  "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -C build-dir=build/gpu-check .
}
note_step_build() {
  local f=$1
  (. "$STATE"; printf 'arch %s' "${CUDA_ARCH:-?}")
  printf ', %s CUDA objects compiled' "$(grep -c 'Building CUDA object' "$f")"
  if grep -q 'Successfully installed gmmfast' "$f"; then printf ', installed'; else printf ', not installed'; fi
}

step_import() {
  cd "$WORK" || return 1   # away from the source tree: the installed package is imported
  "$PY" - "$DRY" <<'EOF'
import json, sys
dry = sys.argv[1] == "1"
import gmmfast
info = gmmfast.build_info()
print(json.dumps(info, indent=1))
print("gmmfast from", gmmfast.__file__)
if not info["cuda_compiled"]:
    sys.exit("gmmfast._cuda was not built (cuda_compiled is False)")
import gmmfast._cuda as m
print("gmmfast._cuda from", m.__file__)
if not dry and not info["cuda_available"]:
    sys.exit("cuda_available is False on the GPU machine")
EOF
  local rc=$? so cuobj
  if [ "$rc" = 0 ] && cuobj=$(find_tool cuobjdump); then
    so=$("$PY" -c 'import gmmfast._cuda as m; print(m.__file__)')
    echo "== cuobjdump --list-elf $so"; "$cuobj" --list-elf "$so" | head -n 20
  fi
  return $rc
}
note_step_import() {
  grep -o -E '"cuda_(compiled|available)": [a-z]+' "$1" | tr -d '"' | paste -s -d ' ' -
}

pytest_timeout_opt() {  # per-test timeout where pytest-timeout is installed (the GPU image has it)
  "$PY" -c 'import pytest_timeout' 2>/dev/null && echo "--timeout=$1"
}

step_cuda_tests() {
  # shellcheck disable=SC2046
  "$PY" -m pytest -q -rfEs -p no:cacheprovider --durations=15 $(pytest_timeout_opt 90) \
    --junitxml="$OUT/cuda-tests.xml" -k "not torch_compile" "${CUDA_TESTS[@]}"
}
note_step_cuda_tests() { junit_counts "$OUT/cuda-tests.xml"; }

step_compile_tests() {
  # shellcheck disable=SC2046
  "$PY" -m pytest -q -rfEs -p no:cacheprovider --durations=5 $(pytest_timeout_opt 110) \
    --junitxml="$LOGS/compile-tests.xml" -k "torch_compile" "${COMPILE_TESTS[@]}"
}
note_step_compile_tests() { junit_counts "$LOGS/compile-tests.xml"; }

sanitize() {  # tool, test ids...
  local tool=$1 cs
  shift
  cs=$(find_tool compute-sanitizer) || { echo "compute-sanitizer not found"; return 1; }
  # --kernel-name kns=gmmfast: check only our kernels (every one lives in namespace
  # gmmfast::cuda, so the substring is in each mangled name); torch's kernels run
  # unchecked, which keeps the run short. memcheck runs without torch's caching allocator,
  # so that an access past the end of a tensor leaves its allocation.
  if [ "$tool" = memcheck ]; then export PYTORCH_NO_CUDA_MEMORY_CACHING=1; fi
  "$cs" --tool "$tool" --kernel-name kns=gmmfast --error-exitcode 86 --print-limit 50 \
    "$PY" -m pytest -q -rfEs -p no:cacheprovider "$@"
}
step_memcheck() { sanitize memcheck "${SAN_TESTS[@]}"; }
step_racecheck() { sanitize racecheck "${SAN_TESTS_SHORT[@]}"; }
step_synccheck() { sanitize synccheck "${SAN_TESTS_SHORT[@]}"; }
note_sanitizer() {
  local f=$1 s api
  s=$(grep -h -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$f" | sed 's/^=* *//' | sort -u | paste -s -d ';' -)
  api=$(grep -c 'Program hit' "$f")
  printf '%s' "${s:-no ERROR SUMMARY line}"
  [ "$api" = 0 ] || printf ' %s CUDA API error report(s) (Program hit ...)' "$api"
  printf '; pytest: %s' "$(grep -E '^[=]* *[0-9]+ (passed|failed|skipped|error)' "$f" | tail -n 1 | tr -d '=' | sed 's/^ *//;s/ *$//')"
}
note_step_memcheck() { note_sanitizer "$@"; }
note_step_racecheck() { note_sanitizer "$@"; }
note_step_synccheck() { note_sanitizer "$@"; }

# dry run only: the sanitizer selection, without the sanitizer (checks that the ids exist)
step_sanitizer_ids() { "$PY" -m pytest -q -rs -p no:cacheprovider "${SAN_TESTS[@]}"; }
note_step_sanitizer_ids() {
  grep -E '^[=]* *[0-9]+ (passed|failed|skipped|error)|not found|ERROR' "$1" | tail -n 2 | tr -d '=' | tr '\n' ' '
}

bench_gpu_part() {  # part name, args...
  local part=$1
  shift
  rm -f "$WORK/bench-$part.json"
  "$PY" bench/bench_gpu.py "$@" --json "$WORK/bench-$part.json" || return $?
  [ -s "$WORK/bench-$part.json" ] || { echo "bench_gpu.py wrote no JSON (no CUDA device?)"; return 1; }
  merge_bench
}
merge_bench() {  # bench-*.json parts -> $OUT/gpu-<slug>.json and a markdown report
  . "$STATE"
  "$PY" - "$WORK" "$OUT/gpu-${SLUG:-unknown}.json" <<'EOF'
import glob, json, os, sys
sys.path.insert(0, "bench")
import bench_gpu
work, out = sys.argv[1], sys.argv[2]
merged = None
for path in sorted(glob.glob(os.path.join(work, "bench-*.json"))):
    part = json.load(open(path))
    if merged is None:
        merged = part
    else:
        merged["cases"].update(part["cases"])
if merged is not None:
    json.dump(merged, open(out, "w"), indent=2)
    open(os.path.join(work, "bench-report.md"), "w").write(bench_gpu.report(merged) + "\n")
    print("merged", sorted(merged["cases"]), "into", out)
EOF
}
step_bench_full() { bench_gpu_part 1-full "${BENCH_FULL_ARGS[@]}"; }
step_bench_diag() { bench_gpu_part 2-diag "${BENCH_DIAG_ARGS[@]}"; }
step_bench_mdn() {
  . "$STATE"
  "$PY" bench/bench_mdn.py "${MDN_ARGS[@]}" --json "$OUT/mdn-gpu-${SLUG:-unknown}.json"
}
note_bench() { grep -E '^- .*(PASS|FAIL)' "$1" | sed 's/^- //' | tr '\n' ';' | cut -c1-400; }
note_step_bench_full() { note_bench "$@"; }
note_step_bench_diag() { note_bench "$@"; }

# dry run only: the benchmarks' --help, and their exact command lines through their argparse
step_bench_args() {
  local rc=0
  "$PY" bench/bench_gpu.py --help || rc=1
  "$PY" bench/bench_mdn.py --help || rc=1
  "$PY" - <<EOF || rc=1
import sys
sys.path.insert(0, "bench")
import bench_gpu
for argv in ([$(printf '"%s", ' "${BENCH_FULL_ARGS[@]}")"--json", "x.json"], [$(printf '"%s", ' "${BENCH_DIAG_ARGS[@]}")"--json", "x.json"]):
    print("bench_gpu.py", argv, "->", vars(bench_gpu.parse_args(argv)))
import bench_mdn  # as a module: parses nothing at import
sys.argv = ["bench_mdn.py", $(printf '"%s", ' "${MDN_ARGS[@]}")"--json", "x.json"]
print("bench_mdn.py", sys.argv[1:], "->", vars(bench_mdn._parse()))
EOF
  return $rc
}
note_step_bench_args() { grep -c -- '->' "$1" | sed 's/$/ command lines parsed/'; }

# ------------------------------------------------------------------------------ one step
# run_step runs `bash gpu_check.sh --step FUNCTION` under timeout: a fresh shell that has
# the selections and functions above, and the exported PY ROOT OUT WORK LOGS STATE DRY.
if [ "${1:-}" = --step ]; then
  cd "$ROOT" || exit 70
  "$2"
  exit $?
fi

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

DRY=${GPU_CHECK_DRY_RUN:-0}
OUT=
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "unknown option $1" >&2; usage >&2; exit 64 ;;
    *) OUT=$1 ;;
  esac
  shift
done
if [ -z "$OUT" ]; then
  echo "usage: bash bench/gpu_check.sh [--dry-run] OUT_DIR" >&2
  exit 64
fi
[ "$DRY" = 1 ] || DRY=0

mkdir -p "$OUT" || exit 64
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.." || exit 64
ROOT=$(pwd)
SELF=$ROOT/bench/gpu_check.sh
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-480}
BUILD_CAP=${GPU_CHECK_BUILD_S:-180}
RESERVE=15   # seconds kept for the final summary and packing
MIN_STEP=20  # a step that would get less than this is skipped
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
LOGS=$WORK/logs
STATE=$WORK/state.sh   # shell variables the steps hand on (device, build result)
mkdir -p "$LOGS"
: >"$STATE"
START=$SECONDS
STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
MODE=$([ "$DRY" = 1 ] && echo dry-run || echo gpu)
export PY ROOT OUT WORK LOGS STATE DRY PYTHONUNBUFFERED=1

# ------------------------------------------------------------------------------ run

trap on_signal TERM INT
trap 'ABORTED="the script ended unexpectedly"; finish 2' EXIT
echo "gmmfast GPU check: mode $MODE, budget $BUDGET s, python $PY, output $OUT"

run_step 01-env 45 step_env
cp "$LOGS/01-env.log" "$OUT/env.txt"
. "$STATE"
if [ "${CUDA_OK:-0}" != 1 ]; then
  if [ "$DRY" = 1 ]; then
    echo "dry run: no CUDA device (expected); continuing with the steps that need none"
  else
    ABORTED="torch sees no CUDA device (01-env: torch.cuda.is_available() is False or torch is missing)"
    finish 2
  fi
fi
if [ -n "${DEVICE_NAME:-}" ]; then
  SLUG=$(printf '%s' "$DEVICE_NAME" | tr '[:upper:]' '[:lower:]' | sed 's/[^a-z0-9.]\{1,\}/-/g;s/^-//;s/-$//')
else
  SLUG=cpu-dry-run
fi
echo "SLUG=$SLUG" >>"$STATE"

run_step 02-build "$BUILD_CAP" step_build
BUILD_STATUS=$LAST_STATUS
run_step 03-import 30 step_import
GPU_READY=0
[ "$BUILD_STATUS" = ok ] && [ "$LAST_STATUS" = ok ] && GPU_READY=1
NOT_READY="gmmfast with CUDA is not built or not usable (02-build: $BUILD_STATUS, 03-import: $LAST_STATUS)"

if [ "$GPU_READY" = 1 ]; then run_step 04-cuda-tests 200 step_cuda_tests
else skip 04-cuda-tests "$NOT_READY"; fi

if ! find_tool compute-sanitizer >/dev/null; then
  for s in 05-memcheck 06-racecheck 07-synccheck; do skip "$s" "compute-sanitizer not found (PATH, /usr/local/cuda*/bin)"; done
elif [ "$GPU_READY" != 1 ]; then
  for s in 05-memcheck 06-racecheck 07-synccheck; do skip "$s" "$NOT_READY"; done
else
  run_step 05-memcheck 90 step_memcheck
  if [ "$LAST_STATUS" = timeout ]; then
    for s in 06-racecheck 07-synccheck; do skip "$s" "memcheck timed out; racecheck and synccheck are slower"; done
  elif grep -q -i 'device not supported' "$LOGS/05-memcheck.log"; then
    for s in 06-racecheck 07-synccheck; do skip "$s" "compute-sanitizer does not support this device (see 05)"; done
  else
    run_step 06-racecheck 75 step_racecheck
    run_step 07-synccheck 60 step_synccheck
  fi
fi
if [ "$DRY" = 1 ]; then
  run_step 07b-sanitizer-ids 60 step_sanitizer_ids
fi

if [ "$DRY" = 1 ]; then
  run_step 08-bench-args 60 step_bench_args
elif [ "$GPU_READY" = 1 ]; then
  run_step 08-bench-full64 75 step_bench_full
  run_step 09-bench-mdn 75 step_bench_mdn
  run_step 10-bench-diag 120 step_bench_diag
else
  for s in 08-bench-full64 09-bench-mdn 10-bench-diag; do skip "$s" "$NOT_READY"; done
fi

if [ "$GPU_READY" = 1 ]; then run_step 11-compile-tests 120 step_compile_tests
else skip 11-compile-tests "$NOT_READY"; fi

COMPLETE=true
code=0
for st in "${S_STATUS[@]}"; do
  case $st in failed|timeout) code=1 ;; esac
done
finish "$code"
