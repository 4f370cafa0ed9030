// The portable scalar path of the Bellman DP: one row and one budget at a time. It is the fallback on CPUs
// without AVX2 (and off x86), and what the vector paths are tested against bit for bit.
#include <cstring>

#include "dp_kernels.h"

namespace boss_fast::detail {

bool has_nonfinite_scalar(const double* row, int64_t lo, int64_t hi) {
  constexpr uint64_t kExp = 0x7ff0000000000000ULL;
  for (int64_t j = lo; j < hi; ++j) {
    uint64_t bits;
    std::memcpy(&bits, row + j, sizeof bits);
    if ((bits & kExp) == kExp) return true;
  }
  return false;
}

namespace {

// min over j in [lo, hi) of row[j] + dv[j], smallest j on ties (strict '<' in increasing j).
ArgMin argmin_sum_scalar(const double* row, const double* dv, int64_t lo, int64_t hi) {
  ArgMin m{kInf, -1};
  for (int64_t j = lo; j < hi; ++j) {
    const double c = row[j] + dv[j];
    if (c < m.value) {
      m.value = c;
      m.index = j;
    }
  }
  return m;
}

}  // namespace

const Kernels kScalarKernels{1, single_row<argmin_sum_scalar>, single_row<argmin_sum_scalar>, false,
                             has_nonfinite_scalar};

}  // namespace boss_fast::detail
