// lmprof's native decode kernels: the arithmetic of one decode step on plain pointers, with
// no torch in sight (decode_step.cpp checks tensors, splits the work over threads and
// registers the op). Every kernel takes the slice of the work [begin, end) one thread owns.
//
// Numerics follow transformers' modeling_llama in fp32 (RMSNorm, rotary "rotate half",
// softmax over scaled scores, SiLU). The order of additions differs, exp is a polynomial
// within 2 ulp (fast_exp), and attention for head sizes 64/128 scales the query before the
// dot products rather than the scores after: logits agree to ~1e-6 relative.

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

// A weight matrix [N, K] the kernels read in place: float32, or int8 with one float32 scale
// per output row (weight-only quantization: y = (W_int8 . x) * scale + bias).
//
// With row_sums (int8 weights only) the product is W8A8: the caller has quantized each
// activation row to int8 (QuantizedRows), and y = (x_q . W_int8) * x_scale * scale + bias, in
// integer arithmetic (AVX512-VNNI). row_sums[n] = sum_k W[n, k], as float (exact below 2^24).
struct Matrix {
  const float* f32 = nullptr;
  const int8_t* i8 = nullptr;
  const float* scales = nullptr;
  const float* bias = nullptr;
  const float* row_sums = nullptr;
  int64_t N = 0, K = 0;
};

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

// How many weight rows one tile reads (R in dot_rows). kTileAuto takes what measured fastest
// for this instruction set and batch (auto_tile_rows); the others force one, so a benchmark
// can set tiles side by side (lmprof_native::linear's tile_rows, benchmarks/native_tiles.py).
enum TileRows : int { kTileAuto = 0, kTileSingles = 1, kTilePairs = 2, kTileTriples = 3 };

// The most activation rows one tile of R weight rows multiplies at once: R x N accumulators,
// R weight vectors and one activation vector must fit the registers (32 with AVX-512, 16 with
// AVX2: 3 x 4 + 3 = 15, 1 x 8 + 1 = 9).
template <int R>
constexpr int max_batch_tile() {
  return kLanes == 16 || R == 1 ? 8 : 4;
}

// Calls chunk(std::integral_constant<int, N>{}, b) over the activation rows [0, B) in tiles of
// N = Max, then one of 4, 2 and 1 for what is left: every tile kernel is a template on N.
// Always inlined: GCC 12 left it a call, and batch-1 passes in a harness here then ran
// 19-28 ms against 20 ms for the hand-written ladder; inlined, the two are level.
template <int Max, typename Chunk>
[[gnu::always_inline]] inline void for_batch_chunks(int64_t B, Chunk&& chunk) {
  int64_t b = 0;
  for (; b + Max <= B; b += Max) chunk(std::integral_constant<int, Max>{}, b);
  if (Max > 4 && b + 4 <= B) chunk(std::integral_constant<int, 4>{}, b), b += 4;
  if (b + 2 <= B) chunk(std::integral_constant<int, 2>{}, b), b += 2;
  if (b < B) chunk(std::integral_constant<int, 1>{}, b);
}

// Rows [begin, begin + R span) of y = W . x in tiles of R rows span apart (row i of the tile is
// begin + r span + i), every batch row; returns the first row not written.
template <int R, typename T, typename Store>
inline int64_t tile_rows_of(const float* x, int64_t B, const T* W, int64_t K, int64_t begin, int64_t end,
                            Store& store) {
  const int64_t span = (end - begin) / R;
  for (int64_t i = 0; i < span; ++i) {
    const T* w[R];
    for (int r = 0; r < R; ++r) w[r] = W + (begin + r * span + i) * K;
    for_batch_chunks<max_batch_tile<R>()>(B, [&](auto N, int64_t b) {
      const float* xs[N];
      for (int j = 0; j < N; ++j) xs[j] = x + (b + j) * K;
      float d[R * N];
      dot_rows<R, N>(w, xs, K, d);
      for (int r = 0; r < R; ++r)
        for (int j = 0; j < N; ++j) store(b + j, begin + r * span + i, d[r * N + j]);
    });
  }
  return begin + R * span;
}

// The tile for batch B, measured per instruction set with benchmarks/native_tiles.py (every
// product of a SmolLM2-135M decode step, one thread; benchmarks/RESULTS.md):
//  - AVX-512 (Zen 4), batch >= 8: triples, 24 accumulators: 1.10-1.30x pairs.
//  - AVX2 (Zen 3), batch >= 4: triples, as 3 x 4 tiles: at batch 8 1.07-1.12x pairs for
//    fp32 and 1.21x for int8, at batch 4 level for fp32 (0.96x) and 1.16x for int8. Singles
//    (1 x 8) lost: 0.44-0.46x fp32, 0.99x int8 at batch 8.
//  - Below that memory bounds the step: pairs, two streams a thread.
inline int auto_tile_rows(int64_t B) {
  return B >= (kLanes == 16 ? 8 : 4) ? kTileTriples : kTilePairs;
}

// Output rows [begin, end) of y = W . x for every batch row, in tiles of R = tile_rows (or
// auto_tile_rows) weight rows; what does not fill a last tile goes through smaller ones.
template <typename T>
inline void matvec_rows_of(const float* x, int64_t B, const T* W, const Matrix& m, float* y, int64_t y_stride,
                           bool accumulate, int64_t begin, int64_t end, int tile_rows) {
  auto store = [&](int64_t b, int64_t n, float dot_value) {
    float v = m.scales ? dot_value * m.scales[n] : dot_value;
    if (m.bias) v += m.bias[n];
    float& out = y[b * y_stride + n];
    out = accumulate ? out + v : v;
  };
  const int R = tile_rows == kTileAuto ? auto_tile_rows(B) : tile_rows;
  int64_t done = begin;
  if (R == 3) done = tile_rows_of<3>(x, B, W, m.K, done, end, store);
  if (R >= 2) done = tile_rows_of<2>(x, B, W, m.K, done, end, store);
  tile_rows_of<1>(x, B, W, m.K, done, end, store);
}

// W8A8 (int8 weights and activations, products in integers) in one of two forms:
//  - AVX512-VNNI: vpdpbusd multiplies unsigned by signed bytes, 64 a instruction, into int32.
//    Activations are stored +128 as uint8; the +128 comes back out through the weights' row
//    sums (Matrix::row_sums).
//  - AVX2: vpmaddubsw multiplies unsigned by signed bytes into int16 pairs, which saturate
//    unless both factors stay within 127 (255 x 127 x 2 overflows). So activations stay
//    signed, and each product is |x| times w with x's sign (vpsignb), llama.cpp's q8_0 trick;
//    weights must lie in [-127, 127] (quantize_per_channel's range). On Zen 3 one step's
//    products at batch 1 ran 1.73-1.82x faster than the int8 weight-only kernel (a harness
//    over these shapes), which converts every weight to float for an FMA.
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define LMPROF_HAS_W8A8 1
#define LMPROF_W8A8_VNNI 1
constexpr int32_t kActivationOffset = 128;
#elif defined(__AVX2__)
#define LMPROF_HAS_W8A8 1
#define LMPROF_W8A8_VNNI 0
constexpr int32_t kActivationOffset = 0;
#else
#define LMPROF_HAS_W8A8 0
#define LMPROF_W8A8_VNNI 0
constexpr int32_t kActivationOffset = 0;
#endif

// Activation rows quantized for W8A8: per row b, x_scale[b] = max|x[b]| / 127 and
// q[b, k] = round(x[b, k] / x_scale[b]) + kActivationOffset, as bytes (uint8 for VNNI, int8
// otherwise). Each thread fills its own copy before a stage's products: B x K bytes, far
// less than one weight row per thread.
struct QuantizedRows {
  std::vector<uint8_t> q;  // [B, K]
  std::vector<float> x_scale;  // [B]

  void fill(const float* x, int64_t B, int64_t K) {
    constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to even (see fast_exp)
    q.resize(B * K);
    x_scale.resize(B);
    for (int64_t b = 0; b < B; ++b) {
      const float* xb = x + b * K;
      float amax = 0.f;
#pragma omp simd reduction(max : amax)
      for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(xb[k]));
      const float scale = amax > 0.f ? amax / 127.f : 1.f;
      const float inv = 1.f / scale;
      x_scale[b] = scale;
      uint8_t* qb = q.data() + b * K;
      int64_t k = 0;
#if defined(__AVX512F__)
      // std::nearbyint is a libm call a value (1.1 ms a step at batch 1); cvtps rounds to even.
      const __m512 inv_lanes = _mm512_set1_ps(inv);
      for (; k + kLanes <= K; k += kLanes) {
        const __m512i rounded = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + k), inv_lanes));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(qb + k),
                         _mm512_cvtepi32_epi8(_mm512_add_epi32(rounded, _mm512_set1_epi32(kActivationOffset))));
      }
#endif
#pragma omp simd
      for (int64_t kk = k; kk < K; ++kk)
        qb[kk] = uint8_t(int32_t((xb[kk] * inv + kRound) - kRound) + kActivationOffset);
    }
  }
};

// A quantized activation as QuantizedRows stores it: uint8 (offset) for VNNI, else int8.
inline int32_t stored_activation(uint8_t v) {
  return kActivationOffset ? int32_t(v) : int32_t(int8_t(v));
}

#if LMPROF_W8A8_VNNI
// Two int8 weight rows against N quantized activation rows: 64 products per vpdpbusd, so the
// product runs at memory speed where the float form of int8 (convert, then FMA) is bound by
// its arithmetic (benchmarks/quant_kernels.py: 1.35-1.43x on one core here).
template <int N>
inline void dot2xN_w8a8(const int8_t* __restrict wa, const int8_t* __restrict wb, const uint8_t* const q[N],
                        int64_t K, int32_t out[2 * N]) {
  __m512i acc_a[N], acc_b[N];
  for (int j = 0; j < N; ++j) acc_a[j] = acc_b[j] = _mm512_setzero_si512();
  const int64_t ahead = prefetch_distance<N>();  // one read per product: set before any step runs
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    if (ahead > 0) {  // one 64-byte line a row per iteration
      __builtin_prefetch(wa + k + ahead, 0, 3);
      __builtin_prefetch(wb + k + ahead, 0, 3);
    }
    const __m512i va = _mm512_loadu_si512(wa + k), vb = _mm512_loadu_si512(wb + k);
#pragma GCC unroll 8
    for (int j = 0; j < N; ++j) {
      const __m512i qj = _mm512_loadu_si512(q[j] + k);
      acc_a[j] = _mm512_dpbusd_epi32(acc_a[j], qj, va);
      acc_b[j] = _mm512_dpbusd_epi32(acc_b[j], qj, vb);
    }
  }
  for (int j = 0; j < N; ++j) {
    out[2 * j] = _mm512_reduce_add_epi32(acc_a[j]);
    out[2 * j + 1] = _mm512_reduce_add_epi32(acc_b[j]);
  }
  for (; k < K; ++k)
    for (int j = 0; j < N; ++j) {
      out[2 * j] += int32_t(q[j][k]) * wa[k];
      out[2 * j + 1] += int32_t(q[j][k]) * wb[k];
    }
}

#elif LMPROF_HAS_W8A8
inline int32_t sum_int32_lanes(__m256i v) {
  const __m128i quads = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  const __m128i pairs = _mm_add_epi32(quads, _mm_shuffle_epi32(quads, 0x4E));
  return _mm_cvtsi128_si32(_mm_add_epi32(pairs, _mm_shuffle_epi32(pairs, 0xB1)));
}

// The same with AVX2 (see kActivationOffset): per 32 products one vpsignb, one vpmaddubsw
// (int16 pairs) and one vpmaddwd (int32 quads) per row. 2 x 4 tiles: 8 accumulators, 2 weight
// vectors, |x| and the signed weights in 13 of the 16 registers.
template <int N>
inline void dot2xN_w8a8(const int8_t* __restrict wa, const int8_t* __restrict wb, const uint8_t* const q[N],
                        int64_t K, int32_t out[2 * N]) {
  __m256i acc_a[N], acc_b[N];
  for (int j = 0; j < N; ++j) acc_a[j] = acc_b[j] = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t ahead = prefetch_distance<N>();  // one read per product: set before any step runs
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    if (ahead > 0 && k % 64 == 0) {
      __builtin_prefetch(wa + k + ahead, 0, 3);
      __builtin_prefetch(wb + k + ahead, 0, 3);
    }
    const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wa + k));
    const __m256i vb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + k));
#pragma GCC unroll 8
    for (int j = 0; j < N; ++j) {
      const __m256i qj = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[j] + k));
      const __m256i magnitude = _mm256_sign_epi8(qj, qj);
      acc_a[j] = _mm256_add_epi32(acc_a[j], _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(va, qj)), ones));
      acc_b[j] = _mm256_add_epi32(acc_b[j], _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(vb, qj)), ones));
    }
  }
  for (int j = 0; j < N; ++j) {
    out[2 * j] = sum_int32_lanes(acc_a[j]);
    out[2 * j + 1] = sum_int32_lanes(acc_b[j]);
  }
  for (; k < K; ++k)
    for (int j = 0; j < N; ++j) {
      out[2 * j] += stored_activation(q[j][k]) * wa[k];
      out[2 * j + 1] += stored_activation(q[j][k]) * wb[k];
    }
}
#endif

#if LMPROF_HAS_W8A8
template <int N, typename Store>
inline void pair_rows_w8a8(const QuantizedRows& x, int64_t b, const int8_t* W, int64_t K, int64_t na, int64_t nb,
                           Store& store) {
  const uint8_t* qs[N];
  for (int j = 0; j < N; ++j) qs[j] = x.q.data() + (b + j) * K;
  int32_t d[2 * N];
  dot2xN_w8a8<N>(W + na * K, W + nb * K, qs, K, d);
  for (int j = 0; j < N; ++j) {
    store(b + j, na, d[2 * j]);
    store(b + j, nb, d[2 * j + 1]);
  }
}

// Output rows [begin, end) of the W8A8 product for every batch row, as row pairs.
inline void matvec_rows_w8a8(const QuantizedRows& x, int64_t B, const Matrix& m, float* y, int64_t y_stride,
                             bool accumulate, int64_t begin, int64_t end) {
  const int64_t K = m.K;
  auto store = [&](int64_t b, int64_t n, int32_t dot_value) {
    // (x_q + offset) . w = x_q . w + offset sum(w)
    float v = (float(dot_value) - float(kActivationOffset) * m.row_sums[n]) * x.x_scale[b] * m.scales[n];
    if (m.bias) v += m.bias[n];
    float& out = y[b * y_stride + n];
    out = accumulate ? out + v : v;
  };
  const int64_t half = (end - begin) / 2;
  for (int64_t i = 0; i < half; ++i) {
    const int64_t na = begin + i, nb = begin + half + i;
    for_batch_chunks<LMPROF_W8A8_VNNI ? 8 : 4>(B, [&](auto N, int64_t b) {
      pair_rows_w8a8<N>(x, b, m.i8, K, na, nb, store);
    });
  }
  if ((end - begin) % 2 == 1) {  // an odd row out
    const int64_t n = end - 1;
    for (int64_t b = 0; b < B; ++b) {
      int32_t d = 0;
      const uint8_t* qb = x.q.data() + b * K;
      for (int64_t k = 0; k < K; ++k) d += stored_activation(qb[k]) * m.i8[n * K + k];
      store(b, n, d);
    }
  }
}
#endif

// y[b, n] (+)= dot(W[n, :], x[b, :]) (* scale[n]) + bias[n] for b < B and the output rows
// n in [begin, end). Rows of y are y_stride apart, so several projections can fill one
// buffer side by side; with `accumulate` the product is added to y (a residual).
inline void matvec_rows(const float* x, int64_t B, const Matrix& m, float* y, int64_t y_stride, bool accumulate,
                        int64_t begin, int64_t end, int tile_rows = kTileAuto) {
  if (m.i8) {
    matvec_rows_of(x, B, m.i8, m, y, y_stride, accumulate, begin, end, tile_rows);
  } else {
    matvec_rows_of(x, B, m.f32, m, y, y_stride, accumulate, begin, end, tile_rows);
  }
}

// The index of the largest of x[0, n), the first one where several tie; a NaN counts as the
// largest (torch.argmax's rule), the first NaN if there are several. Greedy decoding takes
// it over every row of the logits each step: torch's argmax took 0.34-0.66 ms over [8, 49152]
// fp32 on one thread here (2.4-4.6 GB/s, up to 1.6% of a batch-8 step), this 0.05 ms, in one
// vectorized pass (and a second scan only when the row holds a NaN).
inline int64_t argmax(const float* x, int64_t n) {
  typedef int32_t IndexLanes __attribute__((vector_size(kLanes * sizeof(int32_t))));
  int64_t i = 0, best_index = 0;
  float best = -std::numeric_limits<float>::infinity();
  bool any_nan = false;
  if (n >= kLanes && n <= std::numeric_limits<int32_t>::max()) {
    IndexLanes index, lane_index;
    for (int l = 0; l < kLanes; ++l) index[l] = l;
    lane_index = index;
    Lanes lane_best = load_lanes(x);
    Lanes nan_seen = lane_best != lane_best ? Lanes{} + 1.f : Lanes{};
    for (i = kLanes; i + kLanes <= n; i += kLanes) {
      index += int32_t(kLanes);
      const Lanes v = load_lanes(x + i);
      const auto greater = v > lane_best;  // strict: a lane keeps its first maximum
      lane_best = greater ? v : lane_best;
      lane_index = greater ? index : lane_index;
      nan_seen = v != v ? Lanes{} + 1.f : nan_seen;
    }
    for (int l = 0; l < kLanes; ++l) {
      any_nan = any_nan || nan_seen[l] != 0.f;
      if (lane_best[l] > best || (lane_best[l] == best && lane_index[l] < best_index)) {
        best = lane_best[l];
        best_index = lane_index[l];
      }
    }
    if (best == -std::numeric_limits<float>::infinity()) best_index = 0;  // all -inf: the first
  }
  for (; i < n; ++i) {
    if (x[i] != x[i]) any_nan = true;
    if (x[i] > best) best = x[i], best_index = i;
  }
  if (any_nan)
    for (int64_t j = 0; j < n; ++j)
      if (x[j] != x[j]) return j;
  return best_index;
}

// e^x in a form the compiler vectorizes (std::exp stays a scalar call without -ffast-math; the
// clamp needs -fno-trapping-math, which the extension is built with):
// x = n ln2 + r with |r| <= ln2/2, e^r by Cephes' expf polynomial, 2^n built in the exponent
// bits. Within 2 ulp of std::exp for x in [-87, 88]; inputs are clamped to that range.
// n is rounded by adding and subtracting 1.5 * 2^23 (exact for |n| < 2^22), not std::floor:
// GCC vectorizes no loop that calls floor unless math may trap differently (-ffast-math).
inline float fast_exp(float x) {
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it leaves no fraction bits
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// out[b] = weight * (x[b] / sqrt(mean(x[b]^2) + eps)) for rows b in [begin, end), as
// transformers' LlamaRMSNorm in fp32.
inline void rms_norm_rows(const float* x, int64_t D, const float* weight, float eps, float* out, int64_t begin,
                          int64_t end) {
  for (int64_t b = begin; b < end; ++b) {
    const float* xb = x + b * D;
    float* ob = out + b * D;
    float squares = 0.f;
#pragma omp simd reduction(+ : squares)
    for (int64_t k = 0; k < D; ++k) squares += xb[k] * xb[k];
    const float inv_rms = 1.f / std::sqrt(squares / float(D) + eps);
#pragma omp simd
    for (int64_t k = 0; k < D; ++k) ob[k] = weight[k] * (xb[k] * inv_rms);
  }
}

// Rotary embedding in place on `heads` vectors of hd values: HF checkpoints pair dimension i
// with i + hd/2 ("rotate half"). cos, sin: [hd] for this row's position.
inline void rope(float* v, int64_t heads, int64_t hd, const float* cos, const float* sin) {
  const int64_t half = hd / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* x = v + h * hd;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = x[i], x2 = x[i + half];
      x[i] = x1 * cos[i] + (-x2) * sin[i];
      x[i + half] = x2 * cos[i + half] + x1 * sin[i + half];
    }
  }
}

struct AttentionShape {
  int64_t B, H, KV, hd, capacity, slot, qkv_stride;
};

// softmax over scores[0, S) in place, masked entries (-inf) exactly 0; returns the sum of the
// unnormalized weights (the caller divides once).
inline float softmax_unnormalized(float* scores, int64_t S) {
  constexpr float kMasked = -std::numeric_limits<float>::infinity();
  float best = kMasked;
#pragma omp simd reduction(max : best)
  for (int64_t t = 0; t < S; ++t) best = std::max(best, scores[t]);
  float total = 0.f;
#pragma omp simd reduction(+ : total)
  for (int64_t t = 0; t < S; ++t) {
    scores[t] = scores[t] == kMasked ? 0.f : fast_exp(scores[t] - best);
    total += scores[t];
  }
  return total;
}

// One query head against its cached keys 0..S-1 (S = slot + 1): o = softmax(q.k / sqrt(hd)) . v.
// The scalar form, for any head size.
inline void attend_head(const float* q, const float* K, const float* V, const bool* valid, int64_t S, int64_t hd,
                        float scale, float* scores, float* o) {
  constexpr float kMasked = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < S; ++t) scores[t] = valid[t] || t == S - 1 ? dot(q, K + t * hd, hd) * scale : kMasked;
  const float total = softmax_unnormalized(scores, S);
  std::fill(o, o + hd, 0.f);
  for (int64_t t = 0; t < S; ++t) {
    if (scores[t] == 0.f) continue;  // masked: its V row may be anything
    const float w = scores[t] / total;
    const float* v = V + t * hd;
#pragma omp simd
    for (int64_t i = 0; i < hd; ++i) o[i] += w * v[i];
  }
}

// The same for head size kLanes C, with the query and the output in registers:
//  - scores kLanes keys at a time: each key's C products sum into one vector, and sum_lanes
//    turns kLanes such vectors into kLanes scores (the scalar form reduces every key's dot
//    alone);
//  - the weighted sum of V rows accumulates in C registers and is scaled once at the end
//    (the scalar form loads and stores o for every key).
// Measured at batch 8, one thread, SmolLM2-135M (torch.profiler over 64 new tokens after a
// 32-token prompt): attention went from 3.9 to 3.1 ms a decode step.
template <int C>
inline void attend_head_tiled(const float* q, const float* K, const float* V, const bool* valid, int64_t S,
                              float scale, float* scores, float* o) {
  constexpr int64_t hd = C * kLanes;
  constexpr float kMasked = -std::numeric_limits<float>::infinity();
  Lanes qv[C];
#pragma GCC unroll 16
  for (int c = 0; c < C; ++c) qv[c] = load_lanes(q + c * kLanes) * scale;
  int64_t t = 0;
  for (; t + kLanes <= S; t += kLanes) {
    Lanes partial[kLanes];
#pragma GCC unroll 16
    for (int i = 0; i < kLanes; ++i) {
      const float* k = K + (t + i) * hd;
      Lanes acc = qv[0] * load_lanes(k);
#pragma GCC unroll 16
      for (int c = 1; c < C; ++c) acc += qv[c] * load_lanes(k + c * kLanes);
      partial[i] = acc;
    }
    const Lanes sums = sum_lanes(partial);
    std::memcpy(scores + t, &sums, sizeof(sums));
  }
  for (; t < S; ++t) {
    Lanes acc = qv[0] * load_lanes(K + t * hd);
#pragma GCC unroll 16
    for (int c = 1; c < C; ++c) acc += qv[c] * load_lanes(K + t * hd + c * kLanes);
    scores[t] = lane_sum(acc);
  }
  for (int64_t u = 0; u < S - 1; ++u)
    if (!valid[u]) scores[u] = kMasked;  // left padding; a row always sees its own slot
  const float total = softmax_unnormalized(scores, S);
  Lanes out[C] = {};
  for (int64_t u = 0; u < S; ++u) {
    if (scores[u] == 0.f) continue;  // masked: its V row may be anything
    const Lanes w = Lanes{} + scores[u];
    const float* v = V + u * hd;
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) out[c] += w * load_lanes(v + c * kLanes);
  }
  const float inv_total = 1.f / total;
#pragma GCC unroll 16
  for (int c = 0; c < C; ++c) {
    const Lanes r = out[c] * inv_total;
    std::memcpy(o + c * kLanes, &r, sizeof(r));
  }
}

// One query per (row, head) item in [begin, end) over the cached keys 0..slot of its K/V
// head (grouped-query: query heads h share K/V head h / (H / KV), nothing is repeated).
// key_valid masks out left padding; a row always sees its own slot. softmax(q.k / sqrt(hd))
// . v in fp32. `scores` holds slot + 1 floats.
inline void attend_items(const float* qkv, const float* k_cache, const float* v_cache, const bool* key_valid,
                         const AttentionShape& s, float* out, float* scores, int64_t begin, int64_t end) {
  const int64_t groups = s.H / s.KV;
  const int64_t S = s.slot + 1;
  const float scale = 1.f / std::sqrt(float(s.hd));
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / s.H, h = bh % s.H, g = h / groups;
    const float* q = qkv + b * s.qkv_stride + h * s.hd;
    const float* K = k_cache + (b * s.KV + g) * s.capacity * s.hd;
    const float* V = v_cache + (b * s.KV + g) * s.capacity * s.hd;
    const bool* valid = key_valid + b * s.capacity;
    float* o = out + b * s.H * s.hd + h * s.hd;
    if (s.hd == 64) {
      attend_head_tiled<64 / kLanes>(q, K, V, valid, S, scale, scores, o);
      continue;
    }
    if (s.hd == 128) {
      attend_head_tiled<128 / kLanes>(q, K, V, valid, S, scale, scores, o);
      continue;
    }
    attend_head(q, K, V, valid, S, s.hd, scale, scores, o);
  }
}

// act[b, i] = silu(gate[b, i]) * up[b, i] for flat indices j = b * I + i in [begin, end);
// gate and up sit side by side in gate_up [B, 2I].
inline void silu_mul_items(const float* gate_up, int64_t I, float* act, int64_t begin, int64_t end) {
  while (begin < end) {
    const int64_t b = begin / I, i0 = begin % I;
    const int64_t i1 = std::min(I, i0 + (end - begin));
    const float* gate = gate_up + b * 2 * I;
    const float* up = gate + I;
    float* out = act + b * I;
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) out[i] = gate[i] / (1.f + fast_exp(-gate[i])) * up[i];
    begin += i1 - i0;
  }
}

}  // namespace lmprof_native
