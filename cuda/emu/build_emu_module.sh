#!/bin/sh
# Builds gmmfast._cuda's Python module (cuda/bindings.cpp, unmodified) over the HOST
# EMULATION of the kernels (cuda_runtime.h here): "device pointers" are then host
# pointers, so tests can drive the CUDA code path of gmmfast.torch -- pointer plumbing,
# argument order, dtypes, shapes, workspace sizes -- with CPU tensors on a machine
# without a GPU. tests/test_cuda_per_sample.py uses it when GMMFAST_CUDA_EMU_MODULE
# names the output directory. Not for anything else: every launch runs on OS threads.
#
# Usage: sh cuda/emu/build_emu_module.sh [OUT_DIR]   (PYTHON: the interpreter to build for)
# then:  GMMFAST_CUDA_EMU_MODULE=OUT_DIR pytest tests/test_cuda_per_sample.py -k emulated
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-/tmp/gmmfast_cuda_emu_module}
PYTHON=${PYTHON:-python3}
CXX=${CXX:-g++}
mkdir -p "$out/src"
python3 "$here/make_emu.py" "$out/src" "$root"/cuda/estep.cu "$root"/cuda/em_stats.cu "$root"/cuda/grad_x.cu \
    "$root"/cuda/finalize.cu "$root"/cuda/per_sample.cu
includes=$($PYTHON -c "import pybind11, sysconfig; print('-I' + pybind11.get_include(), '-I' + sysconfig.get_paths()['include'])")
suffix=$($PYTHON -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
# Small per-sample grids (64-thread blocks, at most 2): fast to emulate, and every group
# of lanes loops over several rows.
$CXX -std=c++20 -O1 -g -shared -fPIC -fvisibility=hidden -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas \
    -DGMMFAST_PS_BLOCK_THREADS=64 -DGMMFAST_PS_MAX_BLOCKS=2 -DGMMFAST_PS_SCRATCH_MIN_THREADS=64 \
    -I"$here" -I"$root/cuda" -I"$root/cpp/include" $includes \
    "$root/cuda/bindings.cpp" "$out"/src/*.cpp -lpthread -o "$out/_cuda$suffix"
echo "built $out/_cuda$suffix"
