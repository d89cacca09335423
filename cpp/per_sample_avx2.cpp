// The per-sample mixture kernels compiled for the avx2 instruction set (see
// per_sample_kernels.inl; CMakeLists.txt sets this file's compiler flags).
#define GMMFAST_ISA_NS isa_avx2
#define GMMFAST_VBYTES 32
#include "per_sample_kernels.inl"
