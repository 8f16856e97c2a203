// The vector arithmetic under every product of lmprof's native kernels: a register of float
// lanes, its loads (float32 and int8), lane sums, and dot_rows, the tile of R weight rows
// against N activation rows that every matrix-vector product is built from (kernels.h).

#pragma once

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace lmprof_native {

// One register of float lanes in GCC vector extensions: 16 with AVX-512, else 8 (one AVX2
// register, two NEON ones). The width follows the target because the tiles below hold R x N
// accumulators: with 16 lanes on AVX2 each one spans two of its 16 registers, and the batch
// tiles spilled to the stack (measured on Zen 3: batch-8 products streamed 1.8 GB/s).
#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
#else
constexpr int64_t kLanes = 8;
#endif
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));
typedef int8_t Int8Lanes __attribute__((vector_size(kLanes)));
constexpr int64_t kPrefetchRowsAhead = 2;

// How far ahead, in bytes, each weight stream of a tile prefetches into L1; 0 keeps the
// default: no software prefetch at batch 1 (the hardware prefetcher alone) and, at batch > 1,
// the rows kPrefetchRowsAhead ahead into L2 (the W8A8 tiles: none). Two distances, because a
// tile of a few activation rows waits on memory and a tile of kWideTileRows or more on its
// arithmetic, and CPUs differ in which one a prefetch helps: on Zen 5 4 KiB ahead made the fp32
// step 1.01-1.15x faster at batch 1 and its batch-8 products 1.04-1.10x, int8 1.06-1.12x, W8A8
// 1.21x at batch 1 and 1.5x at batch 8; on Zen 3 2 KiB ahead cost 2-9% at batch 1 and 2 but
// made batch 4 and 8 1.05-1.13x faster; on Zen 4 prefetching at batch 1 cost 8% at one thread
// (2026-12-01). Set once per process, before any step, from tuning.py's per-CPU table
// (benchmarks/prefetch_distance.py measures it); read-only while products run.
inline int64_t prefetch_bytes = 0;  // tiles of fewer than kWideTileRows activation rows
inline int64_t prefetch_bytes_wide = 0;  // tiles of kWideTileRows or more
constexpr int kWideTileRows = 4;

// The distance a tile of N activation rows prefetches at (see prefetch_bytes).
template <int N>
inline int64_t prefetch_distance() {
  return N >= kWideTileRows ? prefetch_bytes_wide : prefetch_bytes;
}

inline Lanes load_lanes(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// GCC 12 lowers the generic int8 -> float lane conversion to scalar code (a sign extension
// and a conversion per value: int8 products streamed 1.0 GB/s on AVX2 here); say it directly.
inline Lanes load_lanes(const int8_t* p) {
#if defined(__AVX512F__)
  return (Lanes)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif defined(__AVX2__)
  return (Lanes)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#else
  Int8Lanes v;
  std::memcpy(&v, p, sizeof(v));
  return __builtin_convertvector(v, Lanes);
#endif
}

// Pins a loaded vector in a register (see dot2xN). Only on x86 with AVX2 or AVX-512, where one
// register holds a Lanes value: elsewhere "v" may not name it.
#if defined(__AVX512F__) || defined(__AVX2__)
#define LMPROF_PIN(v) asm("" : "+v"(v))
#else
#define LMPROF_PIN(v) ((void)0)
#endif

inline float lane_sum(Lanes v) {
  float total = 0.f;
  for (int64_t i = 0; i < kLanes; ++i) total += v[i];
  return total;
}

template <typename T>
inline float dot(const T* __restrict a, const float* __restrict b, int64_t n) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < n; ++k) acc += float(a[k]) * b[k];
  return acc;
}

#if defined(__AVX512F__)
// Sixteen accumulators in, one vector out whose lane i is the sum of v[i]'s lanes: a 4-step
// shuffle-and-add tree (15 adds for 16 sums, where 16 separate lane sums take 240), then one
// permute, because the tree leaves the sums in 4x4-transposed order.
[[gnu::always_inline]] inline Lanes sum_lanes16(const Lanes (&v)[16]) {
  __m512 u[8], w[4], z[2];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {  // lanes 0-7: half sums of v[2i]; lanes 8-15: of v[2i + 1]
    const __m512 a = (__m512)v[2 * i], b = (__m512)v[2 * i + 1];
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)  // four sources, 4 partial sums each
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xDD));
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i)  // within 128-bit lanes: eight sources, 2 partial sums each
    z[i] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * i], w[2 * i + 1], 0x44), _mm512_shuffle_ps(w[2 * i], w[2 * i + 1], 0xEE));
  const __m512 sums = _mm512_add_ps(_mm512_shuffle_ps(z[0], z[1], 0x88), _mm512_shuffle_ps(z[0], z[1], 0xDD));
  return (Lanes)_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), sums);
}

#endif

#if defined(__AVX2__) && !defined(__AVX512F__)
// The same for AVX2's 8 lanes: eight accumulators in, lane i of the result the sum of v[i]'s
// lanes, through three horizontal-add steps (hadd pairs neighbours of two sources) and one
// swap of 128-bit halves.
[[gnu::always_inline]] inline Lanes sum_lanes8(const Lanes (&v)[8]) {
  __m256 h[4];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) h[i] = _mm256_hadd_ps((__m256)v[2 * i], (__m256)v[2 * i + 1]);
  const __m256 a = _mm256_hadd_ps(h[0], h[1]), b = _mm256_hadd_ps(h[2], h[3]);
  // a: sums of v0-v3 over lanes 0-3, then over lanes 4-7; b: the same for v4-v7
  return (Lanes)_mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}
#endif

// kLanes accumulators in, one vector out whose lane i is the sum of v[i]'s lanes.
[[gnu::always_inline]] inline Lanes sum_lanes(const Lanes (&v)[kLanes]) {
#if defined(__AVX512F__)
  return sum_lanes16(v);
#elif defined(__AVX2__)
  return sum_lanes8(v);
#else
  Lanes sums;
  for (int64_t i = 0; i < kLanes; ++i) sums[i] = lane_sum(v[i]);
  return sums;
#endif
}

// How many kLanes steps of k one iteration of dot_rows takes, each into its own accumulators.
// An FMA waits on the one before it into the same accumulator (4 cycles on Zen 3 and 4), and
// GCC keeps the order of float additions, so a tile of R N accumulators runs at most R N FMAs
// per 4 cycles: at batch 1 (pairs, 2 chains) the int8 weight-only products, which convert every
// weight before its FMA, waited on those chains. Measured on Zen 4 (AVX2 only), one step's
// products at batch 1 in a harness: int8 11.0 -> 7.1 ms with 4 steps (8 chains), 2 steps 7.2;
// fp32 22.2 -> 19.2 ms median (the fastest pass 17.6 ms either way: memory bound).
template <int R, int N>
constexpr int k_steps() {
  return R * N <= 2 ? 4 : (R * N <= 4 ? 2 : 1);
}

// R weight rows w[0..R-1] against N activation rows x[0..N-1]: R x N accumulators,
// out[r * N + j] = dot(w[r], x[j]). The one kernel of every product; which tile (R, N) runs
// where is matvec_rows_of's choice (see TileRows), measured per instruction set:
//  - Several weight rows far apart in memory (see matvec_rows_of) are several streams per
//    thread: more cache-line fetches in flight than one stream keeps (measured at batch 1:
//    two rows 1.3-2x the bandwidth of four adjacent rows read interleaved).
//  - At batch > 1 each iteration prefetches the rows two ahead (into L2) at the same offset,
//    so where the products rather than memory bound the step, memory keeps streaming under
//    the arithmetic (measured on Zen 4: batch-8 steps 1.3x faster). Where the CPU's table sets
//    prefetch_bytes, every batch prefetches that far ahead into L1 instead.
//  - LMPROF_PIN keeps each loaded weight vector in a register: without it GCC folds the load
//    into every FMA that uses the vector, and the loop waits on load ports.
//  - The accumulators must stay in registers: one array indexed by constants only, copied out
//    by value for the reduction, and sum_lanes always inlined. Where GCC left the reduction a
//    call, the arrays went through the stack and the AVX-512 triple tile lost most of its gain
//    (measured: 1.07x over pairs against 1.22x).
//  - Tiles of few accumulators take k_steps() steps of k an iteration, each into its own set.
template <int R, int N, typename T>
inline void dot_rows(const T* const w[R], const float* const x[N], int64_t K, float out[R * N]) {
  static_assert(R * N <= 2 * kLanes, "dot_rows: more accumulators than two reductions take");
  constexpr int U = k_steps<R, N>();
  Lanes acc[U][R * N] = {};  // acc[u][r * N + j]: weight row r against activation row j, step u
  const int64_t ahead = prefetch_distance<N>();  // one read per product: set before any step runs
  // One kLanes step at k, into the accumulator set `into`.
  auto step = [&](int64_t k, Lanes(&into)[R * N]) __attribute__((always_inline)) {
    if ((k * int64_t(sizeof(T))) % 64 == 0) {  // once per 64-byte line
      if (ahead > 0) {
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) __builtin_prefetch(reinterpret_cast<const char*>(w[r] + k) + ahead, 0, 3);
      } else if (N > 1) {
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) __builtin_prefetch(w[r] + kPrefetchRowsAhead * K + k, 0, 2);
      }
    }
    Lanes wv[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      wv[r] = load_lanes(w[r] + k);
      LMPROF_PIN(wv[r]);
    }
#pragma GCC unroll 8
    for (int j = 0; j < N; ++j) {
      Lanes xj = load_lanes(x[j] + k);
      LMPROF_PIN(xj);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) into[r * N + j] += wv[r] * xj;
    }
  };
  int64_t k = 0;
  for (; k + U * kLanes <= K; k += U * kLanes) {
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) step(k + u * kLanes, acc[u]);
  }
  for (; k + kLanes <= K; k += kLanes) step(k, acc[0]);
#pragma GCC unroll 4
  for (int u = 1; u < U; ++u)
#pragma GCC unroll 32
    for (int i = 0; i < R * N; ++i) acc[0][i] += acc[u][i];
  // The R N sums, kLanes at a time through sum_lanes (at most two groups).
  Lanes first[kLanes] = {}, rest[kLanes] = {};
#pragma GCC unroll 32
  for (int i = 0; i < R * N; ++i) (i < kLanes ? first[i] : rest[i - kLanes]) = acc[0][i];
  const Lanes sums_first = sum_lanes(first);
  std::memcpy(out, &sums_first, sizeof(float) * std::min<int64_t>(R * N, kLanes));
  if (R * N > kLanes) {
    const Lanes sums_rest = sum_lanes(rest);
    std::memcpy(out + kLanes, &sums_rest, sizeof(float) * (R * N - kLanes));
  }
  for (; k < K; ++k)
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < N; ++j) out[r * N + j] += float(w[r][k]) * x[j][k];
}

}  // namespace lmprof_native
