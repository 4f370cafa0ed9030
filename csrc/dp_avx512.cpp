// The AVX-512 path of the Bellman DP: blocks of kRows rows x kGroup budgets, 8 doubles per vector.
//
// One budget of one row costs 16 bytes of loads per candidate (row[j] and dv[j]) and the scan is then
// load-bound (~12.5 Gcand/s on the AVX-512 machine it was tuned on, against ~28 for the two vector ALU ports
// doing add + min), while dv for K = 10 budgets (80 KiB at n = 1001) streams from L2. In a block, kRows rows
// share each dv[j] load and kGroup budgets share each row[j] load: 8/kGroup + 8/kRows bytes per candidate.
// The rows of a block depend on each other only through the in-block j (at most kRows - 1 of them), which
// are folded in afterwards, budget by budget.
//
// Two passes, because a value-plus-index argmin costs 5 vector uops per 8 candidates on AVX-512's two ports
// (0.95 ms at n = 1001, K = 10 there) while a min costs 2. Pass 1 takes the minimum with vminpd and stores
// the running minimum after every 64-wide chunk; the first chunk whose running minimum reaches the final
// minimum holds its first index, and pass 2 rescans only that chunk for the first j whose sum equals it.
// The rescan recomputes the same double sum row[j] + dv[j] that produced the minimum, so the equality is
// exact: it picks an index, it does not backtrack through the table. The finiteness check of the input
// rides on the first budget group's loads.
#include "dp_kernels.h"

#ifdef BOSS_FAST_X86_SIMD
#include <immintrin.h>

namespace boss_fast::detail {
namespace {

// Lanes [0, left) of a vector of 8: all for left >= 8, none for left <= 0.
__attribute__((target("avx512f"))) inline __mmask8 tail_mask(int64_t left) {
  if (left >= 8) return static_cast<__mmask8>(0xFF);
  return left <= 0 ? static_cast<__mmask8>(0) : static_cast<__mmask8>((1u << left) - 1u);
}

// mins[b * G + g] = min over j in [lo, hi) of rows[b][j] + d[g][j]; running[((b * G + g) * chunks + c) * 8 ..]
// holds the lane-wise running minimum after chunk c. With Check, bad[b] |= rows[b][lo:hi] holds a NaN or +-inf
// (an all-ones exponent): the finiteness check rides on the loads the scan makes anyway.
template <int B, int G, bool Check>
__attribute__((target("avx512f"))) void block_scan_avx512(const double* const* rows, const double* const* d,
                                                           int64_t lo, int64_t hi, int64_t chunks,
                                                           double* running, double* mins, bool* bad) {
  const __m512d inf = _mm512_set1_pd(kInf);
  const __m512i exp = _mm512_set1_epi64(0x7ff0000000000000LL);
  __mmask8 nonfinite[B] = {};
  __m512d acc[B][G];
  for (int b = 0; b < B; ++b)
    for (int g = 0; g < G; ++g) acc[b][g] = inf;
  int64_t j = lo, c = 0;
  for (; j + kChunk <= hi; j += kChunk, ++c) {
#pragma GCC unroll 8
    for (int v = 0; v < kChunk; v += 8) {
      __m512d r[B], e[G];
      for (int b = 0; b < B; ++b) r[b] = _mm512_loadu_pd(rows[b] + j + v);
      if constexpr (Check) {
        for (int b = 0; b < B; ++b)
          nonfinite[b] |= _mm512_cmpeq_epi64_mask(_mm512_and_si512(_mm512_castpd_si512(r[b]), exp), exp);
      }
      for (int g = 0; g < G; ++g) e[g] = _mm512_loadu_pd(d[g] + j + v);
      for (int b = 0; b < B; ++b)
        for (int g = 0; g < G; ++g) acc[b][g] = _mm512_min_pd(acc[b][g], _mm512_add_pd(r[b], e[g]));
    }
    for (int b = 0; b < B; ++b)
      for (int g = 0; g < G; ++g) _mm512_storeu_pd(running + ((b * G + g) * chunks + c) * 8, acc[b][g]);
  }
  if (j < hi) {  // the last, partial chunk: masked-off lanes load +inf
    for (; j < hi; j += 8) {
      const __mmask8 in = tail_mask(hi - j);
      __m512d r[B], e[G];
      for (int b = 0; b < B; ++b) r[b] = _mm512_mask_loadu_pd(inf, in, rows[b] + j);
      if constexpr (Check) {
        for (int b = 0; b < B; ++b)
          nonfinite[b] |= _mm512_mask_cmpeq_epi64_mask(in, _mm512_and_si512(_mm512_castpd_si512(r[b]), exp), exp);
      }
      for (int g = 0; g < G; ++g) e[g] = _mm512_mask_loadu_pd(inf, in, d[g] + j);
      for (int b = 0; b < B; ++b)
        for (int g = 0; g < G; ++g) acc[b][g] = _mm512_min_pd(acc[b][g], _mm512_add_pd(r[b], e[g]));
    }
    for (int b = 0; b < B; ++b)
      for (int g = 0; g < G; ++g) _mm512_storeu_pd(running + ((b * G + g) * chunks + c) * 8, acc[b][g]);
  }
  for (int b = 0; b < B; ++b)
    for (int g = 0; g < G; ++g) mins[b * G + g] = _mm512_reduce_min_pd(acc[b][g]);
  if constexpr (Check) {
    for (int b = 0; b < B; ++b) bad[b] = bad[b] || nonfinite[b] != 0;
  }
}

__attribute__((target("avx512f"))) bool has_nonfinite_avx512(const double* row, int64_t lo, int64_t hi) {
  const __m512i exp = _mm512_set1_epi64(0x7ff0000000000000LL);
  __mmask8 bad = 0;
  for (int64_t j = lo; j < hi; j += 8) {
    const __m512i bits = _mm512_castpd_si512(_mm512_maskz_loadu_pd(tail_mask(hi - j), row + j));
    bad |= _mm512_cmpeq_epi64_mask(_mm512_and_si512(bits, exp), exp);
  }
  return bad != 0;
}

// The first j in [lo, hi) with row[j] + d[j] == m, given pass 1's running minima for this (row, budget).
// Branch-free, because an early-exit scan mispredicts on every call (it cost as much as pass 1 itself:
// 0.25 ms of 0.69 at n = 1001, K = 10).
__attribute__((target("avx512f"))) int64_t locate_avx512(const double* row, const double* d, int64_t lo, int64_t hi,
                                                         const double* running, int64_t chunks, double m) {
  const __m512d inf = _mm512_set1_pd(kInf), target = _mm512_set1_pd(m);
  int64_t chunk = 0;
  for (int64_t c0 = 0; c0 < chunks; c0 += 64) {  // running minima only fall: the first chunk that reaches m
    const int64_t c1 = c0 + 64 < chunks ? c0 + 64 : chunks;
    uint64_t hits = 0;
    for (int64_t c = c0; c < c1; ++c) {
      const uint64_t hit = _mm512_cmp_pd_mask(_mm512_loadu_pd(running + c * 8), target, _CMP_EQ_OQ) != 0;
      hits |= hit << (c - c0);
    }
    if (hits) {
      chunk = c0 + __builtin_ctzll(hits);
      break;
    }
  }
  const int64_t base = lo + chunk * kChunk;
  uint64_t hits = 0;
  for (int v = 0; v < kChunk / 8; ++v) {
    const __mmask8 in = tail_mask(hi - base - 8 * v);
    const __m512d s = _mm512_add_pd(_mm512_mask_loadu_pd(inf, in, row + base + 8 * v),
                                    _mm512_mask_loadu_pd(inf, in, d + base + 8 * v));
    hits |= static_cast<uint64_t>(_mm512_mask_cmp_pd_mask(in, s, target, _CMP_EQ_OQ)) << (8 * v);
  }
  return base + __builtin_ctzll(hits);  // hits != 0: chunk holds the minimum
}

// Budgets k0 .. k0 + G - 1 of rows top, top - 1, ..., top - B + 1: argmin over i < j <= n - k of
// row_i[j] + dv[k - 1][j]. Requires top + k0 + G - 1 <= n - 1 (every budget fits from every row of the block).
// With Check, also bad[b] = row top - b holds a NaN or +-inf above the diagonal.
template <int B, int G, bool Check>
__attribute__((target("avx512f"))) void block_budgets_avx512(const Table& t, int64_t top, int64_t k0,
                                                              double* scratch, bool* bad) {
  const int64_t n = t.n;
  const double* cost = t.cost;
  const double* dv = t.dv;
  const double* rows[B];
  const double* d[G];
  for (int b = 0; b < B; ++b) rows[b] = cost + (top - b) * n;
  for (int g = 0; g < G; ++g) d[g] = dv + (k0 - 1 + g) * n;
  const int64_t lo = top + 1, hi = n - (k0 + G - 1) + 1;  // the j every (row, budget) of the block reads
  const int64_t chunks = (hi - lo + kChunk - 1) / kChunk;
  double mins[B * G];
  block_scan_avx512<B, G, Check>(rows, d, lo, hi, chunks, scratch, mins, bad);
  if constexpr (Check) {  // the few j the shared scan does not read: in-block, and the group's tail
    for (int b = 0; b < B; ++b) {
      bad[b] = bad[b] || has_nonfinite_scalar(rows[b], top - b + 1, lo) || has_nonfinite_scalar(rows[b], hi, n);
    }
  }
  // Fold in, budget by budget, the in-block j (smaller than lo) and the budget's own tail (hi .. n - k);
  // dv[k - 1] at in-block j is final: the previous budget (or group) finished every row of the block.
  for (int g = 0; g < G; ++g) {
    const int64_t k = k0 + g;
    for (int b = 0; b < B; ++b) {
      const int64_t r = top - b;
      ArgMin m{kInf, -1};
      for (int64_t j = r + 1; j < lo; ++j) {
        const double s = rows[b][j] + d[g][j];
        if (s < m.value) m = ArgMin{s, j};
      }
      bool in_shared = false;
      if (mins[b * G + g] < m.value) {
        m.value = mins[b * G + g];
        in_shared = true;
      }
      for (int64_t j = hi; j <= n - k; ++j) {
        const double s = rows[b][j] + d[g][j];
        if (s < m.value) {
          m = ArgMin{s, j};
          in_shared = false;
        }
      }
      if (in_shared) {
        m.index = locate_avx512(rows[b], d[g], lo, hi, scratch + (b * G + g) * chunks * 8, chunks, m.value);
      }
      store(t, k, r, m);  // (inf, -1) when every sum overflowed: the caller reports it
    }
  }
}

template <int B, bool Check>
__attribute__((target("avx512f"))) void block_group_avx512(const Table& t, int64_t top, int64_t k0, int count,
                                                            double* scratch, bool* bad) {
  switch (count) {
    case 1: block_budgets_avx512<B, 1, Check>(t, top, k0, scratch, bad); break;
    case 2: block_budgets_avx512<B, 2, Check>(t, top, k0, scratch, bad); break;
    case 3: block_budgets_avx512<B, 3, Check>(t, top, k0, scratch, bad); break;
    default: block_budgets_avx512<B, kGroup, Check>(t, top, k0, scratch, bad); break;
  }
}

template <int B>
__attribute__((target("avx512f"))) void block_avx512(const Table& t, int64_t top, int64_t k0, int count,
                                                      double* scratch, bool* bad) {
  for (bool first = true; count > 0; k0 += kGroup, count -= kGroup, first = false) {
    const int g = count < kGroup ? count : kGroup;
    if (first && bad != nullptr) {  // the first budget group reads every row from memory: check there
      block_group_avx512<B, true>(t, top, k0, g, scratch, bad);
    } else {
      block_group_avx512<B, false>(t, top, k0, g, scratch, bad);
    }
  }
}

}  // namespace

const Kernels kAvx512Kernels{kRows, block_avx512<kRows>, block_avx512<1>, true, has_nonfinite_avx512};

}  // namespace boss_fast::detail
#endif
