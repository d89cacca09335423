// Instruction-set selection, thread counts and build facts.
#include "gmmfast/runtime.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#include <unistd.h>
#define GMMFAST_HAVE_ATFORK 1
#endif

#include "arch/isa.hpp"

namespace gmmfast {
namespace {

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::Avx512: return "avx512";
        case Isa::Avx2: return "avx2";
        default: return "baseline";
    }
}

bool supported(Isa isa) {
    switch (isa) {
        case Isa::Baseline: return true;
#if defined(GMMFAST_HAVE_AVX2)
        case Isa::Avx2:
            __builtin_cpu_init();
            return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
#if defined(GMMFAST_HAVE_AVX512)
        case Isa::Avx512:
            __builtin_cpu_init();
            // libgcc also checks that the OS saves the AVX-512 register state (XCR0).
            return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
        default: return false;
    }
}

bool parse(const std::string& name, Isa& out) {
    for (Isa isa : {Isa::Baseline, Isa::Avx2, Isa::Avx512})
        if (name == isa_name(isa)) {
            out = isa;
            return true;
        }
    return false;
}

Isa best_isa() {
    for (Isa isa : {Isa::Avx512, Isa::Avx2})
        if (supported(isa)) return isa;
    return Isa::Baseline;
}

std::atomic<int>& selected() {
    static std::atomic<int> value([] {
        Isa isa = best_isa();
        if (const char* env = std::getenv("GMMFAST_ISA")) {
            Isa wanted;
            if (parse(env, wanted) && supported(wanted)) isa = wanted;
        }
        return int(isa);
    }());
    return value;
}

}  // namespace

Isa current_isa() { return Isa(selected().load(std::memory_order_relaxed)); }

std::vector<std::string> compiled_isas() {
    std::vector<std::string> out{"baseline"};
#if defined(GMMFAST_HAVE_AVX2)
    out.push_back("avx2");
#endif
#if defined(GMMFAST_HAVE_AVX512)
    out.push_back("avx512");
#endif
    return out;
}

std::string active_isa() { return isa_name(current_isa()); }

bool set_isa(const std::string& name) {
    Isa isa;
    if (!parse(name, isa) || !supported(isa)) return false;
    selected().store(int(isa));
    return true;
}

// ----------------------------------------------------------------------- fork safety
namespace {
std::atomic<bool> g_threads_started{false};  // this process asked OpenMP for > 1 thread
std::atomic<bool> g_forked_child{false};     // ... and this is a child forked after that

#ifdef GMMFAST_HAVE_ATFORK
// Runs in the child right after fork(), before fork() returns: only async-signal-safe
// work (atomic stores; omp_set_num_threads writes the initial thread's ICV, no locks).
void after_fork_in_child() {
    if (!g_threads_started.load(std::memory_order_relaxed)) return;
    g_forked_child.store(true, std::memory_order_relaxed);
#ifdef _OPENMP
    omp_set_num_threads(1);  // regions without a num_threads clause, too
#endif
}
[[maybe_unused]] const bool g_atfork_registered = pthread_atfork(nullptr, nullptr, &after_fork_in_child) == 0;
#endif
}  // namespace

bool single_threaded_after_fork() { return g_forked_child.load(std::memory_order_relaxed); }

int resolve_threads(int requested, bool will_run) {
    if (g_forked_child.load(std::memory_order_relaxed)) return 1;
#ifdef _OPENMP
    // Requests beyond 4 threads per processor (at least 64) only oversubscribe the
    // machine, and thousands of threads can exhaust the process limit, which libgomp
    // treats as fatal: clamp them.
    const int cap = std::max(64, 4 * omp_get_num_procs());
    const int n = requested > 0 ? std::min(requested, cap) : omp_get_max_threads();
#else
    const int n = requested > 0 ? requested : 1;
#endif
    if (n > 1 && will_run) g_threads_started.store(true, std::memory_order_relaxed);
    return n;
}

// ---------------------------------------------------------------------- memory limits
namespace {
/// The first integer after `key` in a small text file (e.g. "MemAvailable:" in kB), or
/// the whole file's integer when key is empty; -1 when absent or unlimited ("max").
int64_t read_number(const char* path, const char* key) {
    std::FILE* f = std::fopen(path, "r");
    if (!f) return -1;
    char line[256];
    int64_t value = -1;
    while (std::fgets(line, sizeof line, f)) {
        const std::size_t klen = std::strlen(key);
        if (std::strncmp(line, key, klen) != 0) continue;
        char* end = nullptr;
        const long long v = std::strtoll(line + klen, &end, 10);
        if (end != line + klen) value = v;
        break;
    }
    std::fclose(f);
    return value;
}
}  // namespace

int64_t available_memory() {
    int64_t avail = -1;
    auto take = [&](int64_t v) {
        if (v >= 0 && (avail < 0 || v < avail)) avail = v;
    };
#if defined(__linux__)
    const int64_t kb = read_number("/proc/meminfo", "MemAvailable:");
    if (kb >= 0) take(kb * 1024);
    // containers: the cgroup's limit binds before the machine's memory does
    const int64_t v2_max = read_number("/sys/fs/cgroup/memory.max", "");
    if (v2_max >= 0) {
        const int64_t used = read_number("/sys/fs/cgroup/memory.current", "");
        take(used >= 0 && used < v2_max ? v2_max - used : 0);
    } else {
        const int64_t v1_max = read_number("/sys/fs/cgroup/memory/memory.limit_in_bytes", "");
        const int64_t used = read_number("/sys/fs/cgroup/memory/memory.usage_in_bytes", "");
        if (v1_max >= 0 && v1_max < (int64_t(1) << 60) && used >= 0) take(used < v1_max ? v1_max - used : 0);
    }
#endif
#if defined(GMMFAST_HAVE_ATFORK) && defined(_SC_AVPHYS_PAGES) && defined(_SC_PAGESIZE)
    if (avail < 0) {
        const long pages = sysconf(_SC_AVPHYS_PAGES), size = sysconf(_SC_PAGESIZE);
        if (pages > 0 && size > 0) take(int64_t(pages) * int64_t(size));
    }
#endif
    return avail;
}

std::string compiler_description() {
#if defined(__clang__)
    return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    return std::string("gcc ") + __VERSION__;
#else
    return "unknown";
#endif
}

int openmp_version() {
#ifdef _OPENMP
    return _OPENMP;
#else
    return 0;
#endif
}

}  // namespace gmmfast
