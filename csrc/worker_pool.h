// The worker pool behind the multi-threaded Bellman DP, and the row-progress wait of its pipeline.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace boss_fast::detail {

// Spin (then yield) until the producer's progress counter `done` has reached `row` or below: rows run
// downwards, so a smaller counter means more work finished.
void wait_for_row(const std::atomic<int64_t>& done, int64_t row);

// A process-wide pool of parked worker threads: starting a thread per call cost 0.1-0.4 ms, as much as the
// whole table at n = 1001, K = 10. Workers poll for kSpin after a job, then park on a condition variable (no
// spinning while idle); they are detached (nothing to join at exit), and a forked child starts a fresh pool
// (its parent's threads do not exist there). One table runs on the pool at a time.
class WorkerPool {
 public:
  static WorkerPool* get();

  // Runs job(g) for g = 1 .. count - 1 on workers and job(0) on the caller, or returns false at once when
  // another table holds the pool (the caller then runs single-threaded).
  bool run(int count, const std::function<void(int)>& job);

 private:
  void loop(int index);

  // Poll this long after a job before parking, as OpenMP runtimes do: a parked worker took ~65 us to wake,
  // a sixth of a whole n = 1001, K = 10 table.
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

}  // namespace boss_fast::detail
