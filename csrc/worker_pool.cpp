// The worker pool behind the multi-threaded Bellman DP (see worker_pool.h).
#include "worker_pool.h"

#include <pthread.h>

#include "dp_kernels.h"

#ifdef BOSS_FAST_X86_SIMD
#include <immintrin.h>
#define BOSS_FAST_PAUSE() _mm_pause()
#else
#define BOSS_FAST_PAUSE() ((void)0)
#endif

namespace boss_fast::detail {

void wait_for_row(const std::atomic<int64_t>& done, int64_t row) {
  for (int spins = 0; done.load(std::memory_order_acquire) > row; ++spins) {
    if (spins < 4096) {
      BOSS_FAST_PAUSE();
    } else {
      std::this_thread::yield();  // oversubscribed (CI, other jobs): let the producer run
    }
  }
}

WorkerPool* WorkerPool::get() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, [] { instance = nullptr; }); });
  std::lock_guard<std::mutex> lock(create_mutex);
  if (instance == nullptr) instance = new WorkerPool();  // leaked on purpose: workers are detached
  return instance;
}

bool WorkerPool::run(int count, const std::function<void(int)>& job) {
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

void WorkerPool::loop(int index) {
  uint64_t seen = 0;
  std::unique_lock<std::mutex> lock(m, std::defer_lock);
  for (;;) {
    const auto until = std::chrono::steady_clock::now() + kSpin;
    while (generation.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < until) {
      BOSS_FAST_PAUSE();
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

}  // namespace boss_fast::detail
