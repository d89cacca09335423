#!/bin/sh
# Runs the per-sample mixture kernels of cuda/per_sample.cu on the CPU in the host
# emulation (cuda_runtime.h) and compares them with the C++ kernels of
# cpp/per_sample*.cpp (emu_per_sample_test.cpp says what is checked), twice:
#   1. AddressSanitizer + UndefinedBehaviorSanitizer, all shapes, with the grid capped
#      at 2 blocks so that every group of lanes loops over several rows;
#   2. ThreadSanitizer (two lanes writing one entry, or a lane reading another's
#      writes without a shuffle, is a data race there), the small shapes.
# A few minutes on two cores. No GPU or CUDA toolkit needed: g++ (>= 10) only.
# Usage: sh cuda/emu/run_per_sample_emulation.sh [BUILD_DIR]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-/tmp/gmmfast_cuda_emu_per_sample}
CXX=${CXX:-g++}
mkdir -p "$build/cpu"
# estep.cu: the shared host helpers (set_device, check_launch, require)
python3 "$here/make_emu.py" "$build/src" "$root"/cuda/per_sample.cu "$root"/cuda/estep.cu

# The CPU reference: cpp/ per-sample kernels, baseline instruction set, no OpenMP.
for f in per_sample per_sample_baseline runtime; do
    o="$build/cpu/$(basename $f).o"
    [ -f "$o" ] && [ "$o" -nt "$root/cpp/$f.cpp" ] && [ "$o" -nt "$root/cpp/per_sample_kernels.inl" ] || \
        $CXX -std=c++17 -O2 -g -Wno-psabi -I"$root/cpp/include" -I"$root/cpp" -c "$root/cpp/$f.cpp" -o "$o"
done

common="-std=c++20 -O1 -g -fno-omit-frame-pointer -Wall -Wextra -Wno-unknown-pragmas -I$here -I$root/cuda -I$root/cpp/include"
# Blocks of 64 threads (each emulated thread is an OS thread, created per launch) and at
# most 2 blocks: rows outnumber groups, so every group loops over several rows (the
# grid-stride loop a big problem takes on a GPU), and the full form's workspace is
# shared by the 128 threads' slices.
emu_grid="-DGMMFAST_PS_BLOCK_THREADS=64 -DGMMFAST_PS_MAX_BLOCKS=2 -DGMMFAST_PS_SCRATCH_MIN_THREADS=64"
$CXX $common $emu_grid \
    -fsanitize=address,undefined -fno-sanitize-recover=undefined \
    "$build"/src/per_sample.cpp "$build"/src/estep.cpp "$here/emu_per_sample_test.cpp" "$build"/cpu/*.o -lpthread -o "$build/emu_ps_asan"
$CXX $common $emu_grid -fsanitize=thread \
    "$build"/src/per_sample.cpp "$build"/src/estep.cpp "$here/emu_per_sample_test.cpp" "$build"/cpu/*.o -lpthread -o "$build/emu_ps_tsan"

echo "== ASan + UBSan"
"$build/emu_ps_asan"
echo "== ThreadSanitizer"
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" "$build/emu_ps_tsan" --quick
echo "per-sample emulation: all passed"
