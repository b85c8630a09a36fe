#pragma once
// CPUInfer: the CPU backend's pool of worker threads. Tasks run on the pool (submit), in a
// CUDA stream's order (submit_with_cuda_stream), or as a range split over the pool
// (parallel_for). An exception thrown by a task is kept and rethrown by the next sync,
// never lost to std::terminate.

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "ekv/core/error.hpp"
#include "ekv/core/stream.hpp"

namespace ekv {
namespace detail {

class PoolState;
// The pool whose worker this thread is, if any: lets sync and parallel_for tell a call
// from one of the pool's own tasks.
inline thread_local const PoolState* current_pool = nullptr;

// What the workers, and host functions still queued on CUDA streams, share. Held by
// shared_ptr so that a host function the stream reaches after the pool is gone still
// finds it.
class PoolState {
 public:
  void start(const std::shared_ptr<PoolState>& self, int num_threads) {
    for (int i = 0; i < num_threads; ++i) threads_.emplace_back([self] { self->work(); });
  }

  // false once shut down: the caller then runs the task itself.
  bool push(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) return false;
      queue_.push_back(std::move(task));
    }
    work_ready_.notify_one();
    return true;
  }

  // Runs a task, keeping the first exception for sync.
  void run(const std::function<void()>& task) noexcept {
    try {
      task();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
  }

  void wait_idle() {
    std::unique_lock<std::mutex> lock(mutex_);
    idle_.wait(lock, [&] { return queue_.empty() && running_ == 0; });
  }

  void rethrow_error() {
    std::exception_ptr error;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      error = std::exchange(error_, nullptr);
    }
    if (error) std::rethrow_exception(error);
  }

  // Runs every queued task, then joins the workers.
  void shutdown() noexcept {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    work_ready_.notify_all();
    for (std::thread& t : threads_) {
      // a task that destroys its own pool cannot join its own thread; that worker ends
      // by itself once the queue is empty
      if (t.get_id() == std::this_thread::get_id()) {
        t.detach();
      } else {
        t.join();
      }
    }
  }

  int num_threads() const noexcept { return static_cast<int>(threads_.size()); }

 private:
  void work() noexcept {
    current_pool = this;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      work_ready_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // shutting down, and every queued task has run
      std::function<void()> task = std::move(queue_.front());
      queue_.pop_front();
      ++running_;
      lock.unlock();
      run(task);
      task = nullptr;  // its captures die before sync can return
      lock.lock();
      --running_;
      if (queue_.empty() && running_ == 0) idle_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable work_ready_;
  std::condition_variable idle_;
  std::deque<std::function<void()>> queue_;
  int running_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;
  std::vector<std::thread> threads_;
};

// A task waiting on a CUDA stream; owned by the host function once enqueued.
struct StreamTask {
  std::shared_ptr<PoolState> pool;
  std::function<void()> task;
};

// The host function: no CUDA call here (CUDA forbids them in host functions). It hands
// the task to the pool and blocks until it has run, so later work on the stream waits.
inline void CUDART_CB run_stream_task(void* data) noexcept {
  const std::unique_ptr<StreamTask> pending(static_cast<StreamTask*>(data));
  PoolState& pool = *pending->pool;
  try {
    // the promise lives in the job, so the worker never touches this frame once done
    auto done = std::make_shared<std::promise<void>>();
    std::future<void> finished = done->get_future();
    if (pool.push([&pool, task = &pending->task, done] {
          pool.run(*task);
          done->set_value();
        })) {
      finished.wait();
      return;
    }
  } catch (...) {  // no memory to queue the job: fall through and run it here
  }
  pool.run(pending->task);  // the pool is shut down: the stream still runs the task, in order
}

// One parallel_for: claims items by an atomic counter; the caller waits for `remaining`.
struct ForState {
  std::atomic<std::int64_t> next{0};
  std::int64_t end = 0;
  std::atomic<std::int64_t> remaining{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex mutex;
  std::condition_variable finished;

  // f is dereferenced only for a claimed item: once all are done, the caller may be gone.
  template <typename F>
  void claim_items(F* f) noexcept {
    for (std::int64_t i = next.fetch_add(1); i < end; i = next.fetch_add(1)) {
      if (!failed.load(std::memory_order_relaxed)) {
        try {
          (*f)(i);
        } catch (...) {
          std::lock_guard<std::mutex> lock(mutex);
          if (!error) error = std::current_exception();
          failed = true;  // the remaining items are skipped
        }
      }
      if (remaining.fetch_sub(1) == 1) {
        std::lock_guard<std::mutex> lock(mutex);  // the waiter is asleep or has not checked yet
        finished.notify_all();
      }
    }
  }
};

}  // namespace detail

// A fixed pool of `num_threads` workers (num_threads <= 0 throws ekv::Error). Move-only;
// the destructor runs every task already queued, then joins the workers, and never throws.
// An exception a task throws is kept: the next sync() or sync_with_cuda_stream() rethrows
// the first one kept (later ones are dropped) and the pool stays usable. One still kept
// when the pool is destroyed is dropped, as a destructor cannot throw. Tasks must not wait
// for a CUDA stream that holds one of this pool's stream tasks.
class CPUInfer {
 public:
  explicit CPUInfer(int num_threads) {
    if (num_threads <= 0) {
      throw Error("CPUInfer: num_threads=" + std::to_string(num_threads) + " must be positive");
    }
    state_ = std::make_shared<detail::PoolState>();
    try {
      state_->start(state_, num_threads);
    } catch (...) {  // a thread could not start: stop the ones that did
      state_->shutdown();
      throw;
    }
  }

  CPUInfer(const CPUInfer&) = delete;  // the workers belong to one pool
  CPUInfer& operator=(const CPUInfer&) = delete;
  CPUInfer(CPUInfer&& other) noexcept : state_(other.release()) {}
  CPUInfer& operator=(CPUInfer&& other) noexcept {
    reset(other.release());
    return *this;
  }
  ~CPUInfer() { reset(nullptr); }

  int num_threads() const noexcept { return state_ ? state_->num_threads() : 0; }

  // Queues `task` to run on a worker.
  void submit(std::function<void()> task) {
    if (!state().push(std::move(task))) throw Error("CPUInfer::submit: the pool is shutting down");
  }

  // Waits until every submitted task has run, then rethrows the first exception a task
  // threw since the last sync. Stream tasks the stream has not reached yet are not waited
  // for (sync_with_cuda_stream is). Throws ekv::Error when called from the pool's own task.
  void sync() {
    if (detail::current_pool == &state()) {
      throw Error("CPUInfer::sync: called from one of the pool's own tasks, it would wait for itself");
    }
    state_->wait_idle();
    state_->rethrow_error();
  }

  // Enqueues `task` on `stream` through cudaLaunchHostFunc: it runs on a worker once the
  // stream's earlier work is done, and the stream's later work waits for it. Its exception
  // surfaces at sync() or sync_with_cuda_stream(). If the pool is destroyed before the
  // stream reaches the task, the stream runs it on CUDA's host-function thread, and its
  // exception is dropped. Not graph-capturable (a host task runs once): throws ekv::Error
  // on a capturing stream.
  void submit_with_cuda_stream(const Stream& stream, std::function<void()> task) {
    state();  // throws when moved from
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    EKV_CUDA_CHECK(cudaStreamIsCapturing(stream.get(), &capture),
                   "CPUInfer::submit_with_cuda_stream: cannot query the stream");
    if (capture != cudaStreamCaptureStatusNone) {
      throw Error("CPUInfer::submit_with_cuda_stream: the stream is capturing a graph; a stream task runs once and "
                  "cannot be replayed");
    }
    auto pending = std::make_unique<detail::StreamTask>(detail::StreamTask{state_, std::move(task)});
    EKV_CUDA_CHECK(cudaLaunchHostFunc(stream.get(), detail::run_stream_task, pending.get()),
                   "CPUInfer::submit_with_cuda_stream: cannot enqueue the host function");
    pending.release();  // the host function owns it now
  }

  // Waits for everything on `stream` (its stream tasks included), then rethrows the first
  // exception a task threw since the last sync. Throws ekv::Error when the stream failed.
  void sync_with_cuda_stream(const Stream& stream) {
    EKV_CUDA_CHECK(cudaStreamSynchronize(stream.get()), "CPUInfer::sync_with_cuda_stream: work on the stream failed");
    state().rethrow_error();
  }

  // Calls f(i) for every i in [begin, end) on the pool, items claimed one at a time (so
  // uneven items balance: make each worth microseconds at least), and returns when all
  // have run. The first exception of f is rethrown here, the items not started by then
  // skipped. From a thread outside the pool the caller only waits; from one of the pool's
  // tasks it claims items too, so nested use cannot deadlock.
  template <typename F>
  void parallel_for(std::int64_t begin, std::int64_t end, F&& f) {
    detail::PoolState& pool = state();
    if (end <= begin) return;
    const std::int64_t items = end - begin;
    auto shared = std::make_shared<detail::ForState>();
    shared->next = begin;
    shared->end = end;
    shared->remaining = items;
    auto* fn = &f;  // alive until `remaining` reaches 0, after which helpers claim nothing
    const bool inside = detail::current_pool == &pool;
    const std::int64_t helpers = std::min<std::int64_t>(items - (inside ? 1 : 0), pool.num_threads() - (inside ? 1 : 0));
    std::int64_t queued = 0;
    try {
      while (queued < helpers && pool.push([shared, fn] { shared->claim_items(fn); })) ++queued;
    } catch (...) {  // no memory for another helper: fewer claim the same items
    }
    if (inside || queued == 0) shared->claim_items(fn);
    {
      std::unique_lock<std::mutex> lock(shared->mutex);
      shared->finished.wait(lock, [&] { return shared->remaining.load() == 0; });
    }
    // taken out first: a helper's copy of `shared` may outlive this call, and the exception
    // is then this thread's alone to release (ThreadSanitizer saw the helper free it while
    // the caller's handler read it, ordered only inside uninstrumented libstdc++)
    if (std::exception_ptr error = std::exchange(shared->error, nullptr)) std::rethrow_exception(error);
  }

 private:
  detail::PoolState& state() const {
    if (!state_) throw Error("CPUInfer: this pool was moved from");
    return *state_;
  }
  std::shared_ptr<detail::PoolState> release() noexcept { return std::exchange(state_, nullptr); }
  void reset(std::shared_ptr<detail::PoolState> state) noexcept {
    if (state_) state_->shutdown();
    state_ = std::move(state);
  }

  std::shared_ptr<detail::PoolState> state_;
};

}  // namespace ekv
