// The DP runs backwards over rows: V[k][i] = min_{i < j <= n-k} c[i][j] + d * V[k-1][j], V[1][i] = c[i][n-1].
// Row i of the matrix is read once from memory and then re-scanned from L1 for every budget k (8 KiB at
// n = 1001), so the matrix streams through the cache once for all budgets; scanning budget by budget
// (k outer) re-reads the whole matrix K times.
//
// The inner argmin is explicit SIMD (AVX-512 or AVX2, picked once at load time from the CPU's features, with a
// portable scalar fallback): GCC 12 does not vectorise a value-plus-index argmin by itself (the scalar loop ran
// 2.9 ms at n = 1001, K = 10 here). Several independent accumulators hide the compare-and-blend latency.
// Every SIMD lane sees its j in increasing order and keeps strict '<', so it holds the smallest index of its
// minimum, and the lane merge breaks ties towards the smaller index: the smallest argmin overall, as the
// NumPy reference's np.argmin gives.

#include "bellman_dp.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <cstring>
#include <limits>
#include <pthread.h>
#include <thread>
#include <vector>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define BOSS_FAST_X86_SIMD 1
#include <immintrin.h>
#endif

namespace boss_fast {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int kRows = 4;    // rows per block (AVX-512)
constexpr int kGroup = 4;   // budgets per group (AVX-512)
constexpr int kChunk = 64;  // candidates between stored running minima: 8 vectors of 8 doubles

struct ArgMin {
  double value;
  int64_t index;
};

struct Kernels;

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

// True when row[lo:hi] holds a NaN or +-inf (an all-ones exponent).
bool has_nonfinite_scalar(const double* row, int64_t lo, int64_t hi) {
  constexpr uint64_t kExp = 0x7ff0000000000000ULL;
  for (int64_t j = lo; j < hi; ++j) {
    uint64_t bits;
    std::memcpy(&bits, row + j, sizeof bits);
    if ((bits & kExp) == kExp) return true;
  }
  return false;
}

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

#ifdef BOSS_FAST_X86_SIMD
// Two passes, because a value-plus-index argmin costs 5 vector uops per 8 candidates on AVX-512's two ports
// (0.95 ms at n = 1001, K = 10 here) while a min costs 2: pass 1 takes the minimum with vminpd over several
// independent accumulators; pass 2 rescans from the left for the first j whose sum equals it and stops there
// (half the range on average). The rescan recomputes the same double sum row[j] + dv[j] that produced the
// minimum, so the equality is exact: it picks an index, it does not backtrack through the table.
// AVX-512 works on a block of kRows rows and up to kGroup budgets at once. One budget of one row costs 16 bytes of
// loads per candidate (row[j] and dv[j]) and the scan is then load-bound (~12.5 Gcand/s here, against ~28 for
// the two vector ALU ports doing add + min), while dv for K = 10 budgets (80 KiB at n = 1001) streams from L2.
// In a block, kRows rows share each dv[j] load and kGroup budgets share each row[j] load: 8/kGroup + 8/kRows
// bytes per candidate. The rows of a block depend on each other only through the in-block j (at most
// kRows - 1 of them), which are folded in afterwards, budget by budget.
//
// Pass 1 takes the minimum with vminpd and stores the running minimum after every 64-wide chunk; the first
// chunk whose running minimum reaches the final minimum holds its first index, and pass 2 rescans only that
// chunk for the first j whose sum equals it. The rescan recomputes the same double sum row[j] + dv[j] that
// produced the minimum, so the equality is exact: it picks an index, it does not backtrack through the table.

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
#endif

// Budgets k0 .. k0 + count - 1 of the block's rows top, top - 1, ...: V[k][r] = min over r < j <= n - k of
// cost[r][j] + dv[k - 1][j], stored as it is found (budget k + 1 of the same block reads it). Requires
// top + k0 + count - 1 <= n - 1. scratch holds kRows * kGroup * ceil(n / 64) * 8 doubles. If the kernel
// fuses the finiteness check (Kernels::fused_check) and bad is not null, bad[b] |= row top - b holds a NaN or
// +-inf above the diagonal.
using BlockFn = void (*)(const Table&, int64_t top, int64_t k0, int count, double* scratch, bool* bad);

struct Kernels {
  int rows;          // rows per block
  BlockFn block;     // a block of `rows` rows
  BlockFn single;    // one row
  bool fused_check;  // block and single check finiteness on their own loads
  bool (*has_nonfinite)(const double* row, int64_t lo, int64_t hi);  // NaN or +-inf in row[lo:hi]
};

template <ArgMin (*argmin_sum)(const double*, const double*, int64_t, int64_t)>
void single_row(const Table& t, int64_t top, int64_t k0, int count, double* /*scratch*/, bool* /*bad*/) {
  for (int64_t k = k0; k < k0 + count; ++k) {
    store(t, k, top, argmin_sum(t.cost + top * t.n, t.dv + (k - 1) * t.n, top + 1, t.n - k + 1));
  }
}

const Kernels kScalarKernels{1, single_row<argmin_sum_scalar>, single_row<argmin_sum_scalar>, false,
                             has_nonfinite_scalar};
#ifdef BOSS_FAST_X86_SIMD
const Kernels kAvx2Kernels{1, single_row<argmin_sum_avx2>, single_row<argmin_sum_avx2>, false,
                           has_nonfinite_scalar};
const Kernels kAvx512Kernels{kRows, block_avx512<kRows>, block_avx512<1>, true, has_nonfinite_avx512};
#endif

// The widest path this CPU runs, or the one `isa` names ("avx512", "avx2", "scalar"); nullptr if this CPU
// cannot run it.
const Kernels* select_kernels(Isa isa) {
#ifdef BOSS_FAST_X86_SIMD
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f"), avx2 = __builtin_cpu_supports("avx2");
  switch (isa) {
    case Isa::kAuto: return avx512 ? &kAvx512Kernels : (avx2 ? &kAvx2Kernels : &kScalarKernels);
    case Isa::kAvx512: return avx512 ? &kAvx512Kernels : nullptr;
    case Isa::kAvx2: return avx2 ? &kAvx2Kernels : nullptr;
    case Isa::kScalar: return &kScalarKernels;
  }
  return nullptr;
#else
  return isa == Isa::kAuto || isa == Isa::kScalar ? &kScalarKernels : nullptr;
#endif
}

// The budgets of one row are independent given the rows after it, so threads split the budgets into
// contiguous groups and run as a pipeline over rows: group g computes V[k][i] for its k once group g - 1 has
// finished row i + 1 (it needs V[k_lo - 1][j] for j > i). Each thread scans its own budgets exactly as the
// single-threaded loop does, so the table is bit-identical whatever the thread count.

void wait_for_row(const std::atomic<int64_t>& done, int64_t row) {
  for (int spins = 0; done.load(std::memory_order_acquire) > row; ++spins) {
    if (spins < 4096) {
#ifdef BOSS_FAST_X86_SIMD
      _mm_pause();
#endif
    } else {
      std::this_thread::yield();  // oversubscribed (CI, other jobs): let the producer run
    }
  }
}

// A process-wide pool of parked worker threads: starting a thread per call cost 0.1-0.4 ms here, as much as
// the whole table at n = 1001, K = 10. Workers poll for 1 ms after a job, then park on a condition variable
// (no spinning while idle), are detached (nothing to join at exit), and a forked child starts a fresh pool (its parent's threads do not
// exist there). One table runs on the pool at a time; a concurrent caller runs single-threaded instead.
class WorkerPool {
 public:
  static WorkerPool* get() {
    static std::once_flag once;
    std::call_once(once, [] { pthread_atfork(nullptr, nullptr, [] { instance = nullptr; }); });
    std::lock_guard<std::mutex> lock(create_mutex);
    if (instance == nullptr) instance = new WorkerPool();  // leaked on purpose: see above
    return instance;
  }

  // Runs job(g) for g = 1 .. count - 1 on workers and job(0) on the caller, or returns false at once when
  // another table holds the pool.
  bool run(int count, const std::function<void(int)>& job) {
    std::unique_lock<std::mutex> busy(run_mutex, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lock(m);
      while (static_cast<int>(workers.size()) < count - 1) {
        const int index = static_cast<int>(workers.size()) + 1;
        workers.emplace_back([this, index] { loop(index); });
        workers.back().detach();
      }
      current = &job;
      active = count;
      pending = count - 1;
      generation.fetch_add(1, std::memory_order_release);
    }
    wake.notify_all();
    job(0);
    std::unique_lock<std::mutex> lock(m);
    done.wait(lock, [this] { return pending == 0; });
    current = nullptr;
    return true;
  }

 private:
  void loop(int index) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(m, std::defer_lock);
    for (;;) {
      // Poll for up to kSpin after a job before parking, as OpenMP runtimes do: a parked worker took ~65 us
      // to wake here, a sixth of a whole n = 1001, K = 10 table.
      const auto until = std::chrono::steady_clock::now() + kSpin;
      while (generation.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < until) {
#ifdef BOSS_FAST_X86_SIMD
        _mm_pause();
#endif
      }
      lock.lock();
      wake.wait(lock, [&] { return generation.load(std::memory_order_relaxed) != seen; });
      seen = generation.load(std::memory_order_relaxed);
      if (index >= active) {
        lock.unlock();
        continue;
      }
      const std::function<void(int)>* job = current;
      lock.unlock();
      (*job)(index);
      lock.lock();
      if (--pending == 0) done.notify_one();
      lock.unlock();
    }
  }

  static constexpr std::chrono::microseconds kSpin{1000};

  static inline WorkerPool* instance = nullptr;
  static inline std::mutex create_mutex;
  std::mutex run_mutex, m;
  std::condition_variable wake, done;
  std::vector<std::thread> workers;
  const std::function<void(int)>* current = nullptr;
  std::atomic<uint64_t> generation{0};
  int active = 0, pending = 0;
};

// Rows n-2 .. 0 (in blocks of kernels->rows where every budget fits), budgets [k_lo, k_hi]. Group 0
// (k_lo == 1) also checks finiteness and fills k = 1.
int64_t run_group(const Table& t, int64_t k_lo, int64_t k_hi, const std::atomic<int64_t>* upstream,
                  std::atomic<int64_t>* done) {
  const int64_t n = t.n;
  const int64_t k0 = k_lo > 2 ? k_lo : 2;
  int64_t bad_row = -1;
  std::vector<double> scratch(static_cast<size_t>(kRows * kGroup * ((n + 63) / 64) * 8));
  for (int64_t top = n - 2; top >= 0;) {
    // Near the end a row cannot take every budget; there, and for the last rows, go one row at a time.
    const bool full = top + 1 >= t.kernels->rows && n - 1 - top >= k_hi;
    const int64_t rows = full ? t.kernels->rows : 1;
    const int64_t bottom = top - rows + 1;
    if (upstream != nullptr) wait_for_row(*upstream, bottom + 1);
    // A (k-1)-step path from j must still fit, so budget k reads j in [r + 1, n - k].
    const int64_t kmax = k_hi < n - 1 - top ? k_hi : n - 1 - top;
    // Group 0 checks finiteness; fused into the first scan where the kernel can (saves a pass over memory).
    const bool fused = k_lo == 1 && t.kernels->fused_check && kmax >= k0;
    bool bad[kRows] = {};
    if (k_lo == 1) {
      for (int64_t r = top; r >= bottom; --r) {
        const double* row = t.cost + r * n;
        if (!fused && t.kernels->has_nonfinite(row, r + 1, n)) bad[top - r] = true;
        store(t, 1, r, ArgMin{row[n - 1], n - 1});
      }
    }
    if (kmax >= k0) {
      const BlockFn scan = full ? t.kernels->block : t.kernels->single;
      scan(t, top, k0, static_cast<int>(kmax - k0 + 1), scratch.data(), fused ? bad : nullptr);
    }
    for (int64_t b = 0; b < rows; ++b) {
      if (bad[b]) bad_row = top - b;  // rows run downwards: ends at the smallest bad row
    }
    if (done != nullptr) done->store(bottom, std::memory_order_release);
    top = bottom - 1;
  }
  return bad_row;
}

}  // namespace

int64_t bellman_table(const double* cost, int64_t n, int64_t max_steps, double discount, double* value,
                      int64_t* next, int threads, Isa isa) {
  const Kernels* kernels = select_kernels(isa);
  if (kernels == nullptr) return -2;
  const int64_t width = (max_steps + 1) * n;
  for (int64_t e = 0; e < width; ++e) {
    value[e] = kInf;
    next[e] = -1;
  }
  // dv[k][j] = discount * V[k][j], rounded once, so the hot loop is a plain add (no multiply to contract).
  std::vector<double> dv_store;
  double* dv = value;
  if (discount != 1.0) {
    dv_store.assign(static_cast<size_t>(width), kInf);
    dv = dv_store.data();
  }
  const Table t{cost, n, discount, value, next, dv, kernels};

  // Below ~2e6 candidates (~0.25 ms) waking a worker and filling the pipeline is not worth it.
  const double work = 0.5 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(max_steps);
  if (threads <= 0) {
    const unsigned hw = std::thread::hardware_concurrency();
    threads = work < 2e6 ? 1 : static_cast<int>(hw == 0 ? 1 : (hw < 8 ? hw : 8));
  }
  // Split the budgets k = 2 .. max_steps into contiguous groups of about equal work. Cost model, in budget
  // scans: a call on g <= kGroup budgets costs 1 + g (their shared row loads, then one dv stream each), the
  // finiteness check rides on group 0's first scan, and a worker starts about one scan late (its wake-up).
  // At n = 1001, K = 10 on 2 threads: k = 2..6 | 7..10 ran in 0.39 ms, 2..5 | 6..10 in 0.42, 2..4 | 5..10 in 0.50.
  const int64_t budgets = max_steps - 1;
  auto cost_of = [](int64_t count) {
    const int64_t full = count / kGroup, rest = count % kGroup;
    return static_cast<double>(full * (1 + kGroup) + (rest > 0 ? 1 + rest : 0));
  };
  std::vector<int64_t> bounds{0};  // group g takes k in (bounds[g], bounds[g + 1]]
  if (threads == 2) {
    int64_t best_split = 0;
    double best = cost_of(budgets) + 1;
    for (int64_t split = 1; split < budgets; ++split) {  // group 0 takes `split` budgets
      const double span = std::max(cost_of(split), 1.0 + cost_of(budgets - split));
      if (span < best) {
        best = span;
        best_split = split;
      }
    }
    if (best_split > 0) bounds.push_back(best_split + 1);
  } else {
    for (int g = 1; g < threads; ++g) {
      int64_t b = static_cast<int64_t>(std::llround(static_cast<double>(budgets) * g / threads / kGroup)) * kGroup;
      b = b < 0 ? 0 : (b > budgets ? budgets : b);
      if (b + 1 > bounds.back()) bounds.push_back(b + 1);
    }
  }
  if (max_steps > bounds.back()) bounds.push_back(max_steps);
  threads = static_cast<int>(bounds.size()) - 1;
  if (threads <= 1) return run_group(t, 1, max_steps, nullptr, nullptr);

  // One cache line per counter: a consumer spinning on its upstream's line must not bounce its own.
  struct alignas(64) Progress {
    std::atomic<int64_t> row;
  };
  std::vector<Progress> done(threads);
  for (auto& d : done) d.row.store(n - 1);  // row n - 1 has no steps to take: "done" from the start
  int64_t bad_row = -1;
  const std::function<void(int)> job = [&](int g) {
    if (g == 0) {
      bad_row = run_group(t, 1, bounds[1], nullptr, &done[0].row);
    } else {
      run_group(t, bounds[g] + 1, bounds[g + 1], &done[g - 1].row, &done[g].row);
    }
  };
  if (!WorkerPool::get()->run(threads, job)) return run_group(t, 1, max_steps, nullptr, nullptr);
  return bad_row;
}

}  // namespace boss_fast
