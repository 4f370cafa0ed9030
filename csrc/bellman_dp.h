// Exact Bellman dynamic program over a cost matrix: every step budget 1..K from one pass over the matrix.
#pragma once

#include <cstdint>

namespace boss_fast {

// Which vector path runs: the widest the CPU has (kAuto), or one by name, for tests and benchmarks.
enum class Isa { kAuto, kAvx512, kAvx2, kScalar };

// cost:  (n, n) row-major; only the strict upper triangle is read.
// value: (max_steps + 1, n) row-major, out. value[k * n + i] is the least discounted cost of going from grid
//        point i to n - 1 in exactly k steps (steps weighted 1, d, d^2, ... from i); entries with no such path
//        (i + k > n - 1) and row k = 0 are left as +inf.
// next:  (max_steps + 1, n) row-major, out. next[k * n + i] is the argmin next index (the smallest on ties);
//        -1 where value is +inf (no path, or every sum overflowed).
// threads: worker threads (<= 0: automatic, one per core up to 8 for large tables); the result is
//          bit-identical for any count.
// isa: the vector path (kAuto: the widest this CPU runs); the result is bit-identical for every path.
// Returns -1 when every upper-triangle entry is finite, else the first row i holding a NaN or +-inf;
// -2 (nothing computed) when this CPU cannot run `isa`.
// Preconditions (checked by the binding): n >= 2, 1 <= max_steps <= n - 1, discount > 0 and finite.
int64_t bellman_table(const double* cost, int64_t n, int64_t max_steps, double discount, double* value,
                      int64_t* next, int threads = 0, Isa isa = Isa::kAuto);

}  // namespace boss_fast
