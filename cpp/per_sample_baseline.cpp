// The per-sample mixture kernels compiled for the baseline instruction set (see
// per_sample_kernels.inl; CMakeLists.txt sets this file's compiler flags).
#define GMMFAST_ISA_NS isa_baseline
#define GMMFAST_VBYTES 16
#include "per_sample_kernels.inl"
