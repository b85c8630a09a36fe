#pragma once
// The vector kernels of CPU attention over float rows: dot products of a query with rows,
// and weighted sums of rows, in eight-float vectors of GCC and Clang's vector extensions
// (one AVX register, or two SSE or NEON registers, whatever the target). g++ 12's own
// vectorization of these loops shuffled lanes (the four-row dot product: attention 2.6x
// slower) or left them scalar (the weighted sum: 1.6x slower) on x86-64-v3, AMD EPYC.
// Row lengths are multiples of 8.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace ekv {

using Float8 = float __attribute__((vector_size(32)));

// Loads and stores go through references, never a returned vector, whose ABI differs
// with and without AVX (-Wpsabi).
inline void load8(Float8& v, const float* p) { std::memcpy(&v, p, sizeof v); }
inline void store8(float* p, const Float8& v) { std::memcpy(p, &v, sizeof v); }

inline float sum8(const Float8& v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }

// out[r] = q . rows[r] for four rows of n: four independent chains of multiply-adds hide
// their latency, and each load of q serves four rows.
inline void dot_rows4(const float* q, const float* const* rows, int n, float* out) {
  Float8 a0 = {}, a1 = {}, a2 = {}, a3 = {}, x, y;
  for (int i = 0; i < n; i += 8) {
    load8(x, q + i);
    load8(y, rows[0] + i);
    a0 += x * y;
    load8(y, rows[1] + i);
    a1 += x * y;
    load8(y, rows[2] + i);
    a2 += x * y;
    load8(y, rows[3] + i);
    a3 += x * y;
  }
  out[0] = sum8(a0);
  out[1] = sum8(a1);
  out[2] = sum8(a2);
  out[3] = sum8(a3);
}

inline float dot_row(const float* q, const float* row, int n) {
  Float8 a = {}, x, y;
  for (int i = 0; i < n; i += 8) {
    load8(x, q + i);
    load8(y, row + i);
    a += x * y;
  }
  return sum8(a);
}

// acc [n] += sum_t p[t] * rows[t] [n] for `count` rows: eight rows per pass, so acc is
// loaded and stored once per eight rows.
inline void accumulate_rows(float* acc, const float* p, const float* const* rows, int count, int n) {
  constexpr int kRows = 8;
  Float8 a, v;
  int t = 0;
  for (; t + kRows <= count; t += kRows) {
    float w[kRows];  // a local copy: acc's stores cannot alias it, so it stays in registers
    for (int j = 0; j < kRows; ++j) w[j] = p[t + j];
    for (int i = 0; i < n; i += 8) {
      load8(a, acc + i);
      for (int j = 0; j < kRows; ++j) {
        load8(v, rows[t + j] + i);
        a += w[j] * v;
      }
      store8(acc + i, a);
    }
  }
  for (; t < count; ++t) {
    for (int i = 0; i < n; i += 8) {
      load8(a, acc + i);
      load8(v, rows[t] + i);
      a += p[t] * v;
      store8(acc + i, a);
    }
  }
}

// The largest of x [n], n >= 1, with std::max_element's result (a NaN counts only first),
// in eight lanes of maxima: std::max_element's one chain, through memory, cost 12% of CPU
// attention's time at group 4 (AMD EPYC, fp16, head_dim 128, one thread).
inline float max_row(const float* x, int n) {
  float m = x[0];
  int i = 0;
  if (n >= 8) {
    Float8 lanes = {}, v;
    lanes += m;  // every lane starts at x[0]: a later NaN never enters a lane
    for (; i + 8 <= n; i += 8) {
      load8(v, x + i);
      lanes = v > lanes ? v : lanes;
    }
    for (int j = 0; j < 8; ++j) m = lanes[j] > m ? lanes[j] : m;
  }
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// Asks for the cache line holding p, into L2. An asm statement where the compiler takes
// one: g++ 12 deletes a loop whose only statement is __builtin_prefetch, as a loop with no
// effect (a loop over a row's lines compiled to a bare return).
inline void prefetch_line_l2(const char* p) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  asm volatile("prefetcht1 %0" : : "m"(*p));
#elif defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
  asm volatile("prfm pldl2keep, %0" : : "Q"(*p));
#else
  __builtin_prefetch(p, 0, 2);
#endif
}

// Bytes [begin, end) of memory, contiguous.
struct PrefetchRun {
  const char* begin = nullptr;
  const char* end = nullptr;
};

// Memory that a tile kernel asks for ahead of its use (into L2), a share of it at each of
// its steps. Spread through the arithmetic, the requests overlap it; asked for all at once,
// they queue behind each other and stall it (benchmarks/RESULTS.md, "CPU decode: prefetch
// spread through the tile"). Runs, not rows, so that rows that follow each other cost one
// loop over their lines.
struct TilePrefetch {
  const PrefetchRun* runs = nullptr;
  int count = 0;
  std::size_t bytes = 0;  // the runs' lengths, summed

  // Calls line(p) for the start of each cache line (64 bytes, or half of a 128-byte line)
  // of bytes [bytes * i / parts, bytes * (i + 1) / parts) of the runs laid end to end: over
  // i < parts, every line of every run, and a line more than once only where two parts or
  // two runs share it.
  template <typename Line>
  void lines(int i, int parts, Line&& line) const {
    std::size_t from = bytes * static_cast<std::size_t>(i) / static_cast<std::size_t>(parts);
    std::size_t to = bytes * static_cast<std::size_t>(i + 1) / static_cast<std::size_t>(parts);
    for (int r = 0; r < count && from < to; ++r) {
      const auto length = static_cast<std::size_t>(runs[r].end - runs[r].begin);
      if (from < length) {
        const auto first = reinterpret_cast<std::uintptr_t>(runs[r].begin + from);
        const auto last = reinterpret_cast<std::uintptr_t>(runs[r].begin + std::min(to, length));
        for (std::uintptr_t l = first & ~std::uintptr_t{63}; l < last; l += 64) line(reinterpret_cast<const char*>(l));
        from = 0;
      } else {
        from -= length;
      }
      to = to > length ? to - length : 0;
    }
  }

  // Asks for part i of parts (lines), into L2.
  void part(int i, int parts) const {
    if (count > 0) lines(i, parts, [](const char* p) { prefetch_line_l2(p); });
  }
};

}  // namespace ekv
