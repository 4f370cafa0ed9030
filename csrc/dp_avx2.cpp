// The AVX2 path of the Bellman DP: one row and one budget at a time, 4 doubles per vector. Pass 1 takes the
// minimum of row[j] + dv[j] over four independent accumulators (vminpd; GCC does not vectorise a
// value-plus-index argmin by itself); pass 2 rescans from the left for the first j whose sum equals it. The
// rescan recomputes the same double sum that produced the minimum, so the equality is exact: it picks an
// index (the smallest on ties, as np.argmin), it does not backtrack through the table.
#include "dp_kernels.h"

#ifdef BOSS_FAST_X86_SIMD
#include <immintrin.h>

namespace boss_fast::detail {
namespace {

__attribute__((target("avx2"))) ArgMin argmin_sum_avx2(const double* row, const double* dv, int64_t lo,
                                                        int64_t hi) {
  constexpr int kAcc = 4, kW = 4;
  __m256d best[kAcc];
  for (int a = 0; a < kAcc; ++a) best[a] = _mm256_set1_pd(kInf);
  int64_t j = lo;
  for (; j + kAcc * kW <= hi; j += kAcc * kW) {
    for (int a = 0; a < kAcc; ++a) {
      const __m256d c = _mm256_add_pd(_mm256_loadu_pd(row + j + a * kW), _mm256_loadu_pd(dv + j + a * kW));
      best[a] = _mm256_min_pd(best[a], c);
    }
  }
  alignas(32) double lanes[kW];
  _mm256_store_pd(lanes, _mm256_min_pd(_mm256_min_pd(best[0], best[1]), _mm256_min_pd(best[2], best[3])));
  double m = lanes[0];
  for (int l = 1; l < kW; ++l) m = lanes[l] < m ? lanes[l] : m;
  for (; j < hi; ++j) {
    const double c = row[j] + dv[j];
    m = c < m ? c : m;
  }
  if (!(m < kInf)) return ArgMin{m, -1};
  const __m256d target = _mm256_set1_pd(m);
  for (j = lo; j + kW <= hi; j += kW) {
    const __m256d c = _mm256_add_pd(_mm256_loadu_pd(row + j), _mm256_loadu_pd(dv + j));
    const int hit = _mm256_movemask_pd(_mm256_cmp_pd(c, target, _CMP_EQ_OQ));
    if (hit) return ArgMin{m, j + __builtin_ctz(static_cast<unsigned>(hit))};
  }
  for (; j < hi; ++j) {
    if (row[j] + dv[j] == m) return ArgMin{m, j};
  }
  return ArgMin{m, -1};
}

}  // namespace

const Kernels kAvx2Kernels{1, single_row<argmin_sum_avx2>, single_row<argmin_sum_avx2>, false,
                           has_nonfinite_scalar};

}  // namespace boss_fast::detail
#endif
