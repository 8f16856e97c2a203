// Matrix-vector products over whole weight matrices: float32, int8 weight-only and W8A8, in
// tiles of weight rows chosen per instruction set and batch, each thread owning rows
// [begin, end) (kernels.h).

#pragma once

#include "simd.h"

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

}  // namespace lmprof_native
