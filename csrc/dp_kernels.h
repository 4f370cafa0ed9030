// What the DP driver (bellman_dp.cpp) and its instruction-set paths (dp_scalar.cpp, dp_avx2.cpp,
// dp_avx512.cpp) share: the table being filled, one path's kernels, and the helpers every path uses.
#pragma once

#include <cstdint>
#include <limits>

#include "bellman_dp.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define BOSS_FAST_X86_SIMD 1
#endif

namespace boss_fast::detail {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int kRows = 4;    // rows per block (AVX-512)
constexpr int kGroup = 4;   // budgets per group (AVX-512)
constexpr int kChunk = 64;  // candidates between stored running minima: 8 vectors of 8 doubles

struct ArgMin {
  double value;
  int64_t index;
};

struct Kernels;

// The table being filled (see bellman_dp.h for value and next); dv[k][j] = discount * V[k][j], which is
// `value` itself when discount == 1.
struct Table {
  const double* cost;
  int64_t n;
  double discount;
  double* value;
  int64_t* next;
  double* dv;
  const Kernels* kernels;
};

// Record V[k][r] (and d * V[k][r], which later budgets read) for row r, budget k.
inline void store(const Table& t, int64_t k, int64_t r, ArgMin m) {
  t.value[k * t.n + r] = m.value;
  t.next[k * t.n + r] = m.index;
  if (t.dv != t.value) t.dv[k * t.n + r] = t.discount * m.value;
}

// Budgets k0 .. k0 + count - 1 of the block's rows top, top - 1, ...: V[k][r] = min over r < j <= n - k of
// cost[r][j] + dv[k - 1][j], stored as it is found (budget k + 1 of the same block reads it). Requires
// top + k0 + count - 1 <= n - 1. scratch holds kRows * kGroup * ceil(n / 64) * 8 doubles. If the kernel
// fuses the finiteness check (Kernels::fused_check) and bad is not null, bad[b] |= row top - b holds a NaN or
// +-inf above the diagonal.
using BlockFn = void (*)(const Table&, int64_t top, int64_t k0, int count, double* scratch, bool* bad);

// One instruction-set path.
struct Kernels {
  int rows;          // rows per block
  BlockFn block;     // a block of `rows` rows
  BlockFn single;    // one row
  bool fused_check;  // block and single check finiteness on their own loads
  bool (*has_nonfinite)(const double* row, int64_t lo, int64_t hi);  // NaN or +-inf in row[lo:hi]
};

// True when row[lo:hi] holds a NaN or +-inf (an all-ones exponent). dp_scalar.cpp.
bool has_nonfinite_scalar(const double* row, int64_t lo, int64_t hi);

// A BlockFn for one row at a time from a one-row, one-budget argmin of row[j] + dv[j] over [lo, hi).
template <ArgMin (*argmin_sum)(const double*, const double*, int64_t, int64_t)>
void single_row(const Table& t, int64_t top, int64_t k0, int count, double* /*scratch*/, bool* /*bad*/) {
  for (int64_t k = k0; k < k0 + count; ++k) {
    store(t, k, top, argmin_sum(t.cost + top * t.n, t.dv + (k - 1) * t.n, top + 1, t.n - k + 1));
  }
}

extern const Kernels kScalarKernels;  // dp_scalar.cpp: portable, one row and one budget at a time
#ifdef BOSS_FAST_X86_SIMD
extern const Kernels kAvx2Kernels;    // dp_avx2.cpp: 4-wide min, then a rescan for the index
extern const Kernels kAvx512Kernels;  // dp_avx512.cpp: 8-wide, blocks of rows x budgets, fused check
#endif

}  // namespace boss_fast::detail
