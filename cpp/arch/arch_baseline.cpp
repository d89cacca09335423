// The kernels (and the missing-value kernels) compiled for the baseline instruction set (see kernels.inl; CMakeLists.txt sets
// this file's compiler flags).
#define GMMFAST_ISA_NS isa_baseline
#define GMMFAST_VBYTES 16
#define GMMFAST_VREGS 16
#include "kernels.inl"
#include "missing_kernels.inl"
