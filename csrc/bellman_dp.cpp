// The Bellman DP driver: picks the instruction-set path, runs the rows, and splits the budgets over threads.
//
// The DP runs backwards over rows: V[k][i] = min_{i < j <= n-k} c[i][j] + d * V[k-1][j], V[1][i] = c[i][n-1].
// Row i of the matrix is read once from memory and then re-scanned from L1 for every budget k (8 KiB at
// n = 1001), so the matrix streams through the cache once for all budgets; scanning budget by budget
// (k outer) re-reads the whole matrix K times.
//
// The inner argmin is one of three paths (dp_avx512.cpp, dp_avx2.cpp, dp_scalar.cpp), the widest this CPU
// runs unless one is named. Every SIMD lane sees its j in increasing order and keeps strict '<', so it holds
// the smallest index of its minimum, and the lane merge breaks ties towards the smaller index: the smallest
// argmin overall, as the NumPy reference's np.argmin gives. Every path returns the same bits.
//
// Threads: the budgets of one row are independent given the rows after it, so threads split the budgets into
// contiguous groups and run as a pipeline over rows (worker_pool.cpp): group g computes V[k][i] for its k once
// group g - 1 has finished row i + 1 (it needs V[k_lo - 1][j] for j > i). Each thread scans its own budgets
// exactly as the single-threaded loop does, so the table is bit-identical whatever the thread count.

#include "bellman_dp.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <thread>
#include <vector>

#include "dp_kernels.h"
#include "worker_pool.h"

namespace boss_fast::detail {
namespace {

// The widest path this CPU runs, or the one `isa` names; nullptr if this CPU cannot run it.
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
}  // namespace boss_fast::detail

namespace boss_fast {

int64_t bellman_table(const double* cost, int64_t n, int64_t max_steps, double discount, double* value,
                      int64_t* next, int threads, Isa isa) {
  using namespace detail;
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
