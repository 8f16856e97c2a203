// lmprof's native decode kernels: the arithmetic of one decode step on plain pointers, with
// no torch in sight (decode_step.cpp checks tensors, splits the work over threads and
// registers the op). Every kernel takes the slice of the work [begin, end) one thread owns.
//
// Numerics follow transformers' modeling_llama in fp32 (RMSNorm, rotary "rotate half",
// softmax over scaled scores, SiLU). The order of additions differs, exp is a polynomial
// within 2 ulp (fast_exp), and attention for head sizes 64/128 scales the query before the
// dot products rather than the scores after: logits agree to ~1e-6 relative.
//
// simd.h holds the vector lanes and the dot-product tiles, matvec.h the matrix products; this
// file the rest of a step: argmax, exp, RMSNorm, rotary embeddings and attention.

#pragma once

#include "matvec.h"

namespace lmprof_native {

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
