// gmmfast._core: what is not a kernel family (gmmfast/runtime.hpp, validate.hpp): the
// non-finite row scan the Python layer validates input with, build information, the
// choice of SIMD variant, and the memory checks and fork state of issue 8.
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "common.hpp"
#include "gmmfast/peak.hpp"
#include "gmmfast/runtime.hpp"
#include "gmmfast/validate.hpp"

namespace gmmfast::bind {
namespace {

using namespace pybind11::literals;

int64_t py_first_nonfinite_row(const py::array& Xa, int n_threads) {
    return dispatch_dtype(Xa, [&](auto tag) -> int64_t {
        using T = decltype(tag);
        CArray<T> X = data_matrix<T>(Xa);
        py::gil_scoped_release release;
        return first_nonfinite_row(X.data(), X.shape(0), X.shape(1), n_threads);
    });
}

py::dict py_build_info() {
    py::dict d;
    d["version"] = GMMFAST_VERSION;
    d["compiler"] = compiler_description();
    const int omp = openmp_version();
    d["openmp"] = omp ? py::object(py::int_(omp)) : py::object(py::none());
    d["max_threads"] = resolve_threads(0, /*will_run=*/false);
#ifdef GMMFAST_SANITIZED
    d["sanitized"] = true;  // ASan + UBSan build (CMake GMMFAST_SANITIZE)
#else
    d["sanitized"] = false;
#endif
    d["isa"] = active_isa();
    d["compiled_isas"] = compiled_isas();
#ifdef NDEBUG
    d["build_type"] = "release";
#else
    d["build_type"] = "debug";
#endif
    return d;
}

/// The benchmark's FMA-throughput ceiling (cpp/peak.cpp), without the GIL.
py::dict py_fma_peak(const std::string& dtype, int n_threads, int64_t iterations, int repeat) {
    FmaPeak p;
    {
        py::gil_scoped_release release;
        p = fma_peak(dtype, n_threads, iterations, repeat);
    }
    py::dict d;
    d["gflops"] = p.gflops;
    d["isa"] = p.isa;
    d["threads"] = p.threads;
    d["lanes"] = p.lanes;
    d["chains"] = p.chains;
    d["iterations"] = p.iterations;
    d["dtype"] = dtype;
    return d;
}

/// Python access to the limits: tests and ops.py (estimates of NumPy-side buffers).
void register_resource_limits(py::module_& m) {
    if (const char* env = std::getenv("GMMFAST_MEMORY_LIMIT")) {
        char* end = nullptr;
        const long long v = std::strtoll(env, &end, 10);
        if (end != env && v >= 0) g_memory_limit.store(v);
    }
    m.def(
        "check_memory",
        [](const std::string& op, const std::vector<std::pair<std::string, double>>& parts, const std::string& advice) {
            MemoryEstimate e(op);
            for (const auto& p : parts) e.add(p.first, p.second);
            e.check(advice);
        },
        "op"_a, "parts"_a, "advice"_a,
        "Raises MemoryError (naming op, the total, its largest parts and advice) when the parts, "
        "[(what, bytes), ...], add up to more than the available memory.");
    m.def("available_memory", &available_memory,
          "Bytes this process can still allocate (MemAvailable and cgroup limit), -1 when unknown.");
    m.def(
        "memory_limit",
        [](const py::object& limit) {
            const int64_t before = g_memory_limit.load();
            if (!limit.is_none()) g_memory_limit.store(limit.cast<int64_t>());
            return before;
        },
        "limit"_a = py::none(),
        "Gets (and with an argument sets) the memory check: -1 measure, 0 off, > 0 bytes available. "
        "Returns the previous value.");
    m.def("single_threaded_after_fork", &single_threaded_after_fork,
          "True in a process forked after gmmfast had started OpenMP threads: kernels run on one thread.");
}

}  // namespace

void register_runtime(py::module_& m) {
    m.def("first_nonfinite_row", &py_first_nonfinite_row, "X"_a, "n_threads"_a = 0);
    m.def("build_info", &py_build_info);
    m.def("active_isa", &active_isa);
    m.def("compiled_isas", &compiled_isas);
    m.def("set_isa", &set_isa, "name"_a,
          "Selects an instruction-set variant of the kernels; False when it is not available here.");
    m.def("fma_peak", &py_fma_peak, "dtype"_a = "float64", "n_threads"_a = 0,
          "iterations"_a = int64_t(20'000'000), "repeat"_a = 3,
          "Measured FMA throughput (GFLOP/s, all threads) of independent vector FMA chains at the "
          "dispatcher's instruction-set width: an upper bound for any kernel, not a GEMM rate.");
    register_resource_limits(m);  // memory checks, fork state (issue 8)
}

}  // namespace gmmfast::bind
