// Instruction-set selection, thread counts and build facts.
#include "gmmfast/runtime.hpp"

#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
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

int resolve_threads(int requested) {
    if (requested > 0) return requested;
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
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
