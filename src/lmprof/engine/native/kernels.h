// lmprof's native decode kernels: the arithmetic of one decode step on plain pointers, with
// no torch in sight (decode_step.cpp checks tensors, splits the work over threads and
// registers the op). Every kernel takes the slice of the work [begin, end) one thread owns.
//
// Numerics follow transformers' modeling_llama in fp32 (RMSNorm, rotary "rotate half",
// softmax over scaled scores, SiLU); only the order of additions differs, so logits agree
// to ~1e-6 relative.

#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace lmprof_native {

// A weight matrix [N, K] the kernels read in place: float32, or int8 with one float32 scale
// per output row (weight-only quantization: y = (W_int8 . x) * scale + bias).
struct Matrix {
  const float* f32 = nullptr;
  const int8_t* i8 = nullptr;
  const float* scales = nullptr;
  const float* bias = nullptr;
  int64_t N = 0, K = 0;
};

// 16 float lanes in GCC vector extensions: the compiler maps them to one AVX-512 register,
// two AVX2 ones or four NEON ones, so the kernels below compile for any target.
typedef float Lanes __attribute__((vector_size(64)));
typedef int8_t Int8Lanes __attribute__((vector_size(16)));
constexpr int64_t kLanes = 16;
constexpr int64_t kPrefetchRowsAhead = 2;

inline Lanes load_lanes(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline Lanes load_lanes(const int8_t* p) {
#if defined(__AVX512F__)
  // GCC 12 lowers the generic int8 -> float lane conversion to scalar code; say it directly.
  return (Lanes)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#else
  Int8Lanes v;
  std::memcpy(&v, p, sizeof(v));
  return __builtin_convertvector(v, Lanes);
#endif
}

inline float lane_sum(Lanes v) {
  float total = 0.f;
  for (int64_t i = 0; i < kLanes; ++i) total += v[i];
  return total;
}

// Two weight rows (wa, wb) against N activation rows (N = 1, 2, 4 or 8), 2N accumulators.
//  - The two rows lie far apart in memory (see matvec_rows), so each thread reads two
//    streams: more cache-line fetches in flight than one stream keeps (measured here: 1.3-2x
//    the bandwidth of four adjacent rows read interleaved, level with a plain read).
//  - At batch > 1 each iteration prefetches the rows two ahead (into L2) at the same offset,
//    so where the products rather than memory bound the step, memory keeps streaming under
//    the arithmetic (measured: batch-8 steps 1.3x faster). At batch 1 the hardware
//    prefetcher alone does better (one thread: 8% faster without; two: within noise).
//  - The empty asm statements pin the loaded vectors in registers: without them GCC folds a
//    load into every FMA that uses a vector, and the loop waits on load ports.
template <int N, typename T>
inline void dot2xN(const T* __restrict wa, const T* __restrict wb, const float* const x[N], int64_t K,
                   float out[2 * N]) {
  Lanes acc_a[N] = {}, acc_b[N] = {};
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    if (N > 1 && (sizeof(T) == sizeof(float) || k % 64 == 0)) {  // once per 64-byte line
      __builtin_prefetch(wa + kPrefetchRowsAhead * K + k, 0, 2);
      __builtin_prefetch(wb + kPrefetchRowsAhead * K + k, 0, 2);
    }
    Lanes va = load_lanes(wa + k), vb = load_lanes(wb + k);
    asm("" : "+v"(va), "+v"(vb));
    for (int j = 0; j < N; ++j) {
      Lanes xj = load_lanes(x[j] + k);
      asm("" : "+v"(xj));
      acc_a[j] += va * xj;
      acc_b[j] += vb * xj;
    }
  }
  for (int j = 0; j < N; ++j) {
    out[2 * j] = lane_sum(acc_a[j]);
    out[2 * j + 1] = lane_sum(acc_b[j]);
  }
  for (; k < K; ++k) {
    const float va = float(wa[k]), vb = float(wb[k]);
    for (int j = 0; j < N; ++j) {
      out[2 * j] += va * x[j][k];
      out[2 * j + 1] += vb * x[j][k];
    }
  }
}

template <typename T>
inline float dot(const T* __restrict a, const float* __restrict b, int64_t n) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < n; ++k) acc += float(a[k]) * b[k];
  return acc;
}

// The weight rows na and nb against activation rows b .. b + N - 1.
template <int N, typename T, typename Store>
inline void pair_rows(const float* x, int64_t b, const T* W, int64_t K, int64_t na, int64_t nb, Store& store) {
  const float* xs[N];
  for (int j = 0; j < N; ++j) xs[j] = x + (b + j) * K;
  float d[2 * N];
  dot2xN<N>(W + na * K, W + nb * K, xs, K, d);
  for (int j = 0; j < N; ++j) {
    store(b + j, na, d[2 * j]);
    store(b + j, nb, d[2 * j + 1]);
  }
}

// Output rows [begin, end) of y = W . x for every batch row, as row pairs (begin + i,
// begin + half + i): see dot2xN.
template <typename T>
inline void matvec_rows_of(const float* x, int64_t B, const T* W, const Matrix& m, float* y, int64_t y_stride,
                    bool accumulate, int64_t begin, int64_t end) {
  const int64_t K = m.K;
  auto store = [&](int64_t b, int64_t n, float dot_value) {
    float v = m.scales ? dot_value * m.scales[n] : dot_value;
    if (m.bias) v += m.bias[n];
    float& out = y[b * y_stride + n];
    out = accumulate ? out + v : v;
  };
  const int64_t half = (end - begin) / 2;
  for (int64_t i = 0; i < half; ++i) {
    const int64_t na = begin + i, nb = begin + half + i;
    int64_t b = 0;
    for (; b + 8 <= B; b += 8) pair_rows<8>(x, b, W, K, na, nb, store);
    if (b + 4 <= B) pair_rows<4>(x, b, W, K, na, nb, store), b += 4;
    if (b + 2 <= B) pair_rows<2>(x, b, W, K, na, nb, store), b += 2;
    if (b < B) pair_rows<1>(x, b, W, K, na, nb, store);
  }
  if ((end - begin) % 2 == 1) {  // an odd row out
    const int64_t n = end - 1;
    for (int64_t b = 0; b < B; ++b) store(b, n, dot(W + n * K, x + b * K, K));
  }
}

// y[b, n] (+)= dot(W[n, :], x[b, :]) (* scale[n]) + bias[n] for b < B and the output rows
// n in [begin, end). Rows of y are y_stride apart, so several projections can fill one
// buffer side by side; with `accumulate` the product is added to y (a residual).
inline void matvec_rows(const float* x, int64_t B, const Matrix& m, float* y, int64_t y_stride, bool accumulate,
                        int64_t begin, int64_t end) {
  if (m.i8) {
    matvec_rows_of(x, B, m.i8, m, y, y_stride, accumulate, begin, end);
  } else {
    matvec_rows_of(x, B, m.f32, m, y, y_stride, accumulate, begin, end);
  }
}

// e^x in a form the compiler vectorizes (std::exp stays a scalar call without -ffast-math):
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

// One query per (row, head) item in [begin, end) over the cached keys 0..slot of its K/V
// head (grouped-query: query heads h share K/V head h / (H / KV), nothing is repeated).
// key_valid masks out left padding; a row always sees its own slot. softmax(q.k / sqrt(hd))
// . v in fp32. `scores` holds slot + 1 floats.
inline void attend_items(const float* qkv, const float* k_cache, const float* v_cache, const bool* key_valid,
                         const AttentionShape& s, float* out, float* scores, int64_t begin, int64_t end) {
  constexpr float kMasked = -std::numeric_limits<float>::infinity();
  const int64_t groups = s.H / s.KV;
  const int64_t S = s.slot + 1;
  const float scale = 1.f / std::sqrt(float(s.hd));
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / s.H, h = bh % s.H, g = h / groups;
    const float* q = qkv + b * s.qkv_stride + h * s.hd;
    const float* K = k_cache + (b * s.KV + g) * s.capacity * s.hd;
    const float* V = v_cache + (b * s.KV + g) * s.capacity * s.hd;
    const bool* valid = key_valid + b * s.capacity;
    float best = kMasked;
    for (int64_t t = 0; t < S; ++t) {
      if (!valid[t] && t != s.slot) {
        scores[t] = kMasked;
        continue;
      }
      scores[t] = dot(q, K + t * s.hd, s.hd) * scale;
      best = std::max(best, scores[t]);
    }
    float total = 0.f;
#pragma omp simd reduction(+ : total)
    for (int64_t t = 0; t < S; ++t) {
      scores[t] = scores[t] == kMasked ? 0.f : fast_exp(scores[t] - best);
      total += scores[t];
    }
    float* o = out + b * s.H * s.hd + h * s.hd;
    std::fill(o, o + s.hd, 0.f);
    for (int64_t t = 0; t < S; ++t) {
      if (scores[t] == 0.f) continue;
      const float w = scores[t] / total;
      const float* v = V + t * s.hd;
#pragma omp simd
      for (int64_t i = 0; i < s.hd; ++i) o[i] += w * v[i];
    }
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
