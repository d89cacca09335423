// The kernels (and the missing-value kernels) compiled for the avx2 instruction set (see kernels.inl; CMakeLists.txt sets
// this file's compiler flags).
#define GMMFAST_ISA_NS isa_avx2
#define GMMFAST_VBYTES 32
#define GMMFAST_VREGS 16
#include "kernels.inl"
#include "missing_kernels.inl"
