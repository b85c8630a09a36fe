// CPUInfer without streams: many small tasks, what sync waits for, exceptions, shutdown
// under load, parallel_for (nested too), moves. Stream-ordered tasks: thread_pool_stream_test.cu.

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "ekv/cpu/thread_pool.hpp"

TEST_CASE("CPUInfer rejects a thread count that is not positive") {
  CHECK_THROWS_WITH_AS(ekv::CPUInfer(0), "CPUInfer: num_threads=0 must be positive", ekv::Error);
  CHECK_THROWS_AS(ekv::CPUInfer(-3), ekv::Error);
  CHECK(ekv::CPUInfer(3).num_threads() == 3);
}

TEST_CASE("sync waits for many small tasks, and for tasks that tasks submit") {
  ekv::CPUInfer pool(4);
  std::atomic<int> count{0};
  for (int round = 0; round < 5; ++round) {
    for (int i = 0; i < 20000; ++i) pool.submit([&] { count.fetch_add(1, std::memory_order_relaxed); });
    pool.sync();
    CHECK(count.load() == 20000 * (round + 1));
  }
  // a task queued by a running task is queued before that task ends, so sync sees it
  std::atomic<int> children{0};
  for (int i = 0; i < 100; ++i) {
    pool.submit([&] {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
      pool.submit([&] { children.fetch_add(1); });
    });
  }
  pool.sync();
  CHECK(children.load() == 100);
}

TEST_CASE("an exception in a task is rethrown by the next sync, once, and the pool goes on") {
  ekv::CPUInfer pool(3);
  std::atomic<int> ran{0};
  for (int i = 0; i < 1000; ++i) {
    pool.submit([&, i] {
      ran.fetch_add(1);
      if (i % 100 == 7) throw std::runtime_error("task " + std::to_string(i));
    });
  }
  CHECK_THROWS_AS(pool.sync(), std::runtime_error);
  CHECK(ran.load() == 1000);  // a throwing task stops nothing else
  CHECK_NOTHROW(pool.sync());  // rethrown once
  pool.submit([] { throw 42; });  // not derived from std::exception
  CHECK_THROWS_AS(pool.sync(), int);
  pool.submit([&] { ran.fetch_add(1); });
  pool.sync();
  CHECK(ran.load() == 1001);
  // sync from a task would wait for itself: it throws, and the outer sync reports that
  pool.submit([&] { pool.sync(); });
  CHECK_THROWS_WITH_AS(pool.sync(), "CPUInfer::sync: called from one of the pool's own tasks, it would wait for itself",
                       ekv::Error);
}

TEST_CASE("destroying a loaded pool runs every queued task and joins, throwing nothing") {
  std::atomic<int> ran{0};
  {
    ekv::CPUInfer pool(2);
    for (int i = 0; i < 500; ++i) {
      pool.submit([&, i] {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
        ran.fetch_add(1);
        if (i % 50 == 0) throw std::runtime_error("never synced");
      });
    }
  }
  CHECK(ran.load() == 500);
  // a task may destroy the pool it runs on: its own worker is let go instead of joined
  auto* pool = new ekv::CPUInfer(2);
  std::promise<void> submitted, destroyed;
  std::shared_future<void> go = submitted.get_future().share();
  pool->submit([pool, go, &destroyed] {
    go.wait();  // until submit has returned: no call may be inside the pool it destroys
    delete pool;
    destroyed.set_value();
  });
  submitted.set_value();
  destroyed.get_future().wait();
}

TEST_CASE("parallel_for runs every index once, rethrows, and nests without deadlock") {
  ekv::CPUInfer pool(3);
  std::vector<std::atomic<int>> hits(10007);
  pool.parallel_for(5, 10007, [&](std::int64_t i) { hits[i].fetch_add(1); });
  for (std::size_t i = 0; i < hits.size(); ++i) CHECK(hits[i].load() == (i < 5 ? 0 : 1));
  pool.parallel_for(3, 3, [](std::int64_t) { FAIL("an empty range runs nothing"); });
  CHECK_THROWS_WITH_AS(pool.parallel_for(0, 100, [](std::int64_t i) {
    if (i == 42) throw std::runtime_error("item 42");
  }), "item 42", std::runtime_error);
  CHECK_NOTHROW(pool.sync());  // parallel_for's exception is its own, not the next sync's

  // from inside a task of a one-worker pool: the caller claims the items itself
  ekv::CPUInfer single(1);
  std::atomic<int> inner{0};
  single.submit([&] { single.parallel_for(0, 50, [&](std::int64_t) { inner.fetch_add(1); }); });
  single.sync();
  CHECK(inner.load() == 50);
  // nested on a busy pool: every outer item runs its own inner loop
  std::atomic<int> nested{0};
  pool.submit([&] {
    pool.parallel_for(0, 8, [&](std::int64_t) { pool.parallel_for(0, 8, [&](std::int64_t) { nested.fetch_add(1); }); });
  });
  pool.sync();
  CHECK(nested.load() == 64);
}

TEST_CASE("CPUInfer moves: construct, assign onto a live pool, self-move, destroy moved-from") {
  std::atomic<int> ran{0};
  ekv::CPUInfer a(2);
  ekv::CPUInfer b(std::move(a));
  CHECK(a.num_threads() == 0);
  CHECK(b.num_threads() == 2);
  CHECK_THROWS_WITH_AS(a.submit([] {}), "CPUInfer: this pool was moved from", ekv::Error);
  CHECK_THROWS_AS(a.sync(), ekv::Error);
  ekv::CPUInfer c(1);
  for (int i = 0; i < 100; ++i) c.submit([&] { ran.fetch_add(1); });
  c = std::move(b);  // c's own pool finishes its queue before it goes
  CHECK(ran.load() == 100);
  CHECK(c.num_threads() == 2);
  ekv::CPUInfer& alias = c;
  c = std::move(alias);
  CHECK(c.num_threads() == 2);
  c.submit([&] { ran.fetch_add(1); });
  c.sync();
  CHECK(ran.load() == 101);
}
