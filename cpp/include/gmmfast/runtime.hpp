// Runtime facts: which instruction-set variant of the kernels runs, thread counts,
// build details.
#pragma once

#include <string>
#include <vector>

namespace gmmfast {

/// The instruction-set variants compiled into this build, best last, e.g.
/// {"baseline", "avx2", "avx512"}.
std::vector<std::string> compiled_isas();

/// The variant the kernels use: the best one this CPU supports, unless the environment
/// variable GMMFAST_ISA names another supported one (used by the tests to cover every
/// variant). Decided once per process.
std::string active_isa();

/// Forces a variant (returns false when it is not compiled in or not supported here).
bool set_isa(const std::string& name);

/// Threads a kernel uses for a requested count (<= 0: OpenMP's default).
int resolve_threads(int requested);

/// Compiler, OpenMP version, flags.
std::string compiler_description();
int openmp_version();  ///< the _OPENMP date macro, 0 without OpenMP

}  // namespace gmmfast
