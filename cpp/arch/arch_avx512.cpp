// The kernels (and the missing-value kernels) compiled for the avx512 instruction set (see kernels.inl; CMakeLists.txt sets
// this file's compiler flags).
#define GMMFAST_ISA_NS isa_avx512
#define GMMFAST_VBYTES 64
#define GMMFAST_VREGS 32
#include "kernels.inl"
#include "missing_kernels.inl"
