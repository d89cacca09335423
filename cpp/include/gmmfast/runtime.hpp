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

/// Threads a kernel uses for a requested count (<= 0: OpenMP's default; requests are
/// capped at max(64, 4 x processors)); always 1 in a process forked from one that had
/// run gmmfast's kernels on several threads (below).
/// `will_run`: the caller is about to run a parallel region with that many threads
/// (false for queries such as build_info, which must not count as having started any).
int resolve_threads(int requested, bool will_run = true);

/// Fork safety (issue 8). GNU libgomp's thread pool does not survive fork(): in the
/// child, the first parallel region waits forever for the parent's pool threads. So a
/// child forked (by any means: os.fork, multiprocessing 'fork', C fork) from a process
/// whose gmmfast kernels had started OpenMP threads runs them on one thread
/// (pthread_atfork handler; also sets OpenMP's default to 1 there). Children of a process
/// that never did (e.g. multiprocessing's forkserver) keep every thread.
bool single_threaded_after_fork();

/// Bytes this process can still allocate without swapping or being killed: the smaller
/// of MemAvailable (/proc/meminfo) and the cgroup's memory limit minus its usage (Linux),
/// the free physical pages elsewhere (sysconf); -1 when unknown. Reads a few small files:
/// call it for large requests only.
int64_t available_memory();

/// Compiler, OpenMP version, flags.
std::string compiler_description();
int openmp_version();  ///< the _OPENMP date macro, 0 without OpenMP

}  // namespace gmmfast
