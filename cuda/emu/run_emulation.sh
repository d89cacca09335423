#!/bin/sh
# Runs the CUDA kernels of cuda/*.cu on the CPU in the host emulation (cuda_runtime.h)
# and compares them with the C++ kernels of cpp/, twice:
#   1. AddressSanitizer + UndefinedBehaviorSanitizer (out-of-bounds reads at partial
#      tiles, integer overflow, ...), all shapes;
#   2. ThreadSanitizer (a missing __syncthreads is a data race between the block's
#      threads), the smaller shapes.
# No GPU or CUDA toolkit needed: g++ (>= 10) only. Usage: sh cuda/emu/run_emulation.sh [BUILD_DIR]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-/tmp/gmmfast_cuda_emu}
CXX=${CXX:-g++}
mkdir -p "$build/cpu"
python3 "$here/make_emu.py" "$build/src" "$root"/cuda/estep.cu "$root"/cuda/em_stats.cu \
    "$root"/cuda/grad_x.cu "$root"/cuda/finalize.cu

# The CPU reference: cpp/ kernels, baseline instruction set, no OpenMP (single-threaded).
for f in dispatch finalize runtime validate arch/arch_baseline; do
    o="$build/cpu/$(basename $f).o"
    [ -f "$o" ] && [ "$o" -nt "$root/cpp/$f.cpp" ] || \
        $CXX -std=c++17 -O2 -g -Wno-psabi -I"$root/cpp/include" -I"$root/cpp" -c "$root/cpp/$f.cpp" -o "$o"
done

common="-std=c++20 -O1 -g -fno-omit-frame-pointer -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas -I$here -I$root/cuda -I$root/cpp/include"
# ASan build: tiny chunking constants, so that small problems still put several row tiles
# in a chunk and several row tiles in each grad_x block (the loops a big GPU run takes).
$CXX $common -DGMMFAST_CUDA_TARGET_BLOCKS=3 -DGMMFAST_CUDA_MAX_GRAD_BLOCKS=2 \
    -fsanitize=address,undefined -fno-sanitize-recover=undefined \
    "$build"/src/*.cpp "$here/emu_test.cpp" "$build"/cpu/*.o -lpthread -o "$build/emu_asan"
$CXX $common -fsanitize=thread \
    "$build"/src/*.cpp "$here/emu_test.cpp" "$build"/cpu/*.o -lpthread -o "$build/emu_tsan"

echo "== ASan + UBSan"
"$build/emu_asan"
echo "== ThreadSanitizer"
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" "$build/emu_tsan" --quick
echo "emulation: all passed"
