// A measured FMA-throughput ceiling for the benchmark harness (cpp/peak.cpp).
#pragma once

#include <cstdint>
#include <string>

namespace gmmfast {

struct FmaPeak {
    std::string isa;      ///< the dispatcher's instruction set, whose vector width was used
    int threads = 1;      ///< threads that ran the loop
    int lanes = 1;        ///< elements per vector
    int chains = 0;       ///< independent FMA chains per thread
    int64_t iterations = 0;
    double gflops = 0.0;  ///< best over the repeats, all threads together
    double checksum = 0.0;
};

/// Runs `iterations` rounds of independent vector FMAs (dtype "float32" or "float64")
/// on n_threads threads (<= 0: OpenMP's default), `repeat` times after one warm-up run,
/// and reports the best rate. Throws std::invalid_argument naming a bad argument.
FmaPeak fma_peak(const std::string& dtype, int n_threads, int64_t iterations, int repeat);

}  // namespace gmmfast
