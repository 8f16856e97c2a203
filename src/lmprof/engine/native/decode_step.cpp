// lmprof's native decode step: one call runs a whole Llama-family decoder (RMSNorm, rotary
// GQA attention over a static KV cache, SwiGLU MLP, final norm, output head) for one new
// token per row, on CPU, with fp32 activations and fp32 or int8 weight-only matrices.
//
// Why it exists: at batch 1 a decode step reads every weight once and does little else, so
// its floor is weight bytes over memory bandwidth. PyTorch's eager path adds ~50 dispatched
// ops per layer on top, and its fp32 one-row product (MKL sgemm with M = 1) streams about
// half the machine's read bandwidth. Here every projection is a matrix-vector product split
// over torch's intra-op threads, everything else is a loop over a few KB, and Python makes
// one call per step.
//
// Numerics follow transformers' modeling_llama in fp32 (norm, rotary "rotate half", softmax
// over scaled scores, SiLU); only the order of additions differs, so logits agree to ~1e-6
// relative.
//
// When torch.profiler is on, each part opens the same "module:<path>" range lmprof's module
// hooks open for the Python model, and each kernel is a "lmprof_native::*" op inside it, so
// the deep views (step breakdown, module table, flame graph) read this path like any other.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace {

// Per-layer tensors in the order lmprof/engine/native_decode.py passes them: each projection
// is (weight, bias, scales). An absent tensor (no bias, float weights' scales, or the parts of
// a fused projection that live in its first matrix) is an empty tensor.
enum LayerSlot : int64_t {
  kAttnNorm,
  kQ, kQBias, kQScale, kK, kKBias, kKScale, kV, kVBias, kVScale, kO, kOBias, kOScale,
  kMlpNorm,
  kGate, kGateBias, kGateScale, kUp, kUpBias, kUpScale, kDown, kDownBias, kDownScale,
  kSlotsPerLayer
};

bool present(const at::Tensor& t) {
  return t.defined() && t.numel() > 0;
}

// A weight matrix [N, K] the kernels read in place: float32, or int8 with one float32 scale
// per output row (weight-only quantization: y = (W_int8 . x) * scale + bias).
struct Matrix {
  const float* f32 = nullptr;
  const int8_t* i8 = nullptr;
  const float* scales = nullptr;
  const float* bias = nullptr;
  int64_t N = 0, K = 0;
};

Matrix matrix(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scales, int64_t in_features,
              const char* what) {
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous() && weight.size(1) == in_features,
              "lmprof_native: ", what, " must be a contiguous [out, ", in_features,
              "] matrix (checkpoint layout); got ", weight.sizes(), " with strides ", weight.strides());
  Matrix m;
  m.N = weight.size(0);
  m.K = in_features;
  if (weight.scalar_type() == at::kFloat) {
    m.f32 = weight.data_ptr<float>();
  } else {
    TORCH_CHECK(weight.scalar_type() == at::kChar && present(scales) && scales.scalar_type() == at::kFloat &&
                    scales.numel() == m.N && scales.is_contiguous(),
                "lmprof_native: ", what, " must be float32, or int8 with float32 scales [out]; got ",
                weight.scalar_type());
    m.i8 = weight.data_ptr<int8_t>();
    m.scales = scales.data_ptr<float>();
  }
  if (present(bias)) {
    TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.numel() == m.N && bias.is_contiguous(),
                "lmprof_native: ", what, "'s bias must be float32 [out]");
    m.bias = bias.data_ptr<float>();
  }
  return m;
}

// 16 float lanes in GCC vector extensions: the compiler maps them to one AVX-512 register,
// two AVX2 ones or four NEON ones, so the kernels below compile for any target.
typedef float Lanes __attribute__((vector_size(64)));
typedef int8_t Int8Lanes __attribute__((vector_size(16)));
constexpr int64_t kLanes = 16;

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
//  - Each iteration prefetches the rows two ahead (into L2) at the same offset, so at batch 8,
//    where the products rather than memory bound the step, memory keeps streaming under the
//    arithmetic (measured: batch-8 steps 1.3x faster; batch-1 steps 5% faster).
//  - The empty asm statements pin the loaded vectors in registers: without them GCC folds a
//    load into every FMA that uses a vector, and the loop waits on load ports.
template <int N, typename T>
inline void dot2xN(const T* __restrict wa, const T* __restrict wb, const float* const x[N], int64_t K,
                   float out[2 * N]) {
  Lanes acc_a[N] = {}, acc_b[N] = {};
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    if (sizeof(T) == sizeof(float) || k % 64 == 0) {  // once per 64-byte line
      __builtin_prefetch(wa + 2 * K + k, 0, 2);
      __builtin_prefetch(wb + 2 * K + k, 0, 2);
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
// begin + half + i); see matvec.
template <typename T>
void matvec_rows(const float* x, int64_t B, const T* W, const Matrix& m, float* y, int64_t y_stride,
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

// y[b, n] (+)= dot(W[n, :], x[b, :]) (* scale[n]) + bias[n] for b < B, n < N.
// Rows of y are y_stride apart, so several projections can fill one buffer side by side.
// Threads split the weight rows: each weight byte is read from memory once per call.
void matvec(const float* x, int64_t B, const Matrix& m, float* y, int64_t y_stride, bool accumulate) {
  RECORD_FUNCTION(m.i8 ? "lmprof_native::matvec_int8" : "lmprof_native::matvec", c10::ArrayRef<const c10::IValue>{});
  const int64_t row_bytes = m.K * (m.i8 ? 1 : int64_t(sizeof(float)));
  // At least ~32 KB of weights per task, so a small projection is not split thin.
  const int64_t grain = std::max<int64_t>(2, (32 * 1024) / row_bytes);
  at::parallel_for(0, m.N, grain, [&](int64_t begin, int64_t end) {
    if (m.i8) {
      matvec_rows(x, B, m.i8, m, y, y_stride, accumulate, begin, end);
    } else {
      matvec_rows(x, B, m.f32, m, y, y_stride, accumulate, begin, end);
    }
  });
}

// e^x in a form the compiler vectorizes (std::exp stays a scalar call without -ffast-math):
// x = n ln2 + r with |r| <= ln2/2, e^r by Cephes' expf polynomial, 2^n built in the exponent
// bits. Within 2 ulp of std::exp for x in [-87, 88]; inputs are clamped to that range.
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
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

// out[b] = weight * (x[b] / sqrt(mean(x[b]^2) + eps)), as transformers' LlamaRMSNorm in fp32.
void rms_norm(const float* x, int64_t B, int64_t D, const float* weight, float eps, float* out) {
  RECORD_FUNCTION("lmprof_native::rms_norm", c10::ArrayRef<const c10::IValue>{});
  for (int64_t b = 0; b < B; ++b) {
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
void rope(float* v, int64_t heads, int64_t hd, const float* cos, const float* sin) {
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

// One query per row and head over the cached keys 0..slot of its K/V head (grouped-query:
// query heads h share K/V head h / (H / KV), nothing is repeated). key_valid masks out left
// padding; a row always sees its own slot. softmax(q.k / sqrt(hd)) . v in fp32.
void attend(const float* qkv, const float* k_cache, const float* v_cache, const bool* key_valid,
            const AttentionShape& s, float* out) {
  RECORD_FUNCTION("lmprof_native::attention", c10::ArrayRef<const c10::IValue>{});
  const int64_t groups = s.H / s.KV;
  const int64_t S = s.slot + 1;
  const float scale = 1.f / std::sqrt(float(s.hd));
  at::parallel_for(0, s.B * s.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p(S);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / s.H, h = bh % s.H, g = h / groups;
      const float* q = qkv + b * s.qkv_stride + h * s.hd;
      const float* K = k_cache + (b * s.KV + g) * s.capacity * s.hd;
      const float* V = v_cache + (b * s.KV + g) * s.capacity * s.hd;
      const bool* valid = key_valid + b * s.capacity;
      float best = -std::numeric_limits<float>::infinity();
      for (int64_t t = 0; t < S; ++t) {
        if (!valid[t] && t != s.slot) {
          p[t] = -std::numeric_limits<float>::infinity();
          continue;
        }
        p[t] = dot(q, K + t * s.hd, s.hd) * scale;
        best = std::max(best, p[t]);
      }
      float total = 0.f;
      float* pp = p.data();
#pragma omp simd reduction(+ : total)
      for (int64_t t = 0; t < S; ++t) {
        pp[t] = pp[t] == -std::numeric_limits<float>::infinity() ? 0.f : fast_exp(pp[t] - best);
        total += pp[t];
      }
      float* o = out + b * s.H * s.hd + h * s.hd;
      std::fill(o, o + s.hd, 0.f);
      for (int64_t t = 0; t < S; ++t) {
        if (p[t] == 0.f) continue;
        const float w = p[t] / total;
        const float* v = V + t * s.hd;
#pragma omp simd
        for (int64_t i = 0; i < s.hd; ++i) o[i] += w * v[i];
      }
    }
  });
}

// act[b, i] = silu(gate[b, i]) * up[b, i], gate and up side by side in gate_up [B, 2I].
void silu_mul(const float* gate_up, int64_t B, int64_t I, float* act) {
  RECORD_FUNCTION("lmprof_native::silu_mul", c10::ArrayRef<const c10::IValue>{});
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float* gate = gate_up + b * 2 * I;
      const float* up = gate + I;
      float* out = act + b * I;
#pragma omp simd
      for (int64_t i = 0; i < I; ++i) out[i] = gate[i] / (1.f + fast_exp(-gate[i])) * up[i];
    }
  });
}

std::string path(int64_t layer, const char* part) {
  return "module:layers." + std::to_string(layer) + "." + part;
}

struct Projection {
  const at::Tensor& weight;  // [N, K], or empty when a fused projection holds this one
  const at::Tensor& bias;    // [N] or empty
  const at::Tensor& scales;  // [N] for int8 weights, else empty
  const char* module;        // the engine's module path under the layer, for the profiler
};

// The projections of one stage (q, k, v or gate, up), fused or not, written side by side
// into out [B, out_stride]; returns the number of output columns written.
int64_t project(const float* in, int64_t B, int64_t K, int64_t layer,
                std::initializer_list<Projection> parts,
                float* out, int64_t out_stride) {
  int64_t column = 0;
  for (const Projection& part : parts) {
    if (part.weight.numel() == 0) continue;
    RECORD_USER_SCOPE(path(layer, part.module));
    const Matrix m = matrix(part.weight, part.bias, part.scales, K, part.module);
    TORCH_CHECK(column + m.N <= out_stride, "lmprof_native: ", part.module, " has more outputs than expected");
    matvec(in, B, m, out + column, out_stride, false);
    column += m.N;
  }
  return column;
}



at::Tensor decode_step(const at::Tensor& embeddings, const at::Tensor& cos, const at::Tensor& sin,
                       const at::Tensor& key_valid, int64_t slot, at::TensorList weights,
                       at::TensorList k_cache, at::TensorList v_cache, const at::Tensor& final_norm,
                       const at::Tensor& lm_head, const at::Tensor& lm_head_scales, int64_t n_heads,
                       int64_t n_kv_heads, double eps_d) {
  TORCH_CHECK(embeddings.dim() == 2 && embeddings.scalar_type() == at::kFloat,
              "lmprof_native: embeddings must be float32 [B, D]");
  const int64_t B = embeddings.size(0), D = embeddings.size(1);
  const int64_t L = static_cast<int64_t>(k_cache.size());
  TORCH_CHECK(L > 0 && static_cast<int64_t>(v_cache.size()) == L &&
                  static_cast<int64_t>(weights.size()) == L * kSlotsPerLayer,
              "lmprof_native: expected ", kSlotsPerLayer, " weights per layer for ", L, " layers, got ",
              weights.size());
  const at::Tensor& k0 = k_cache[0];
  TORCH_CHECK(k0.dim() == 4 && k0.size(0) == B && k0.size(1) == n_kv_heads && k0.scalar_type() == at::kFloat,
              "lmprof_native: the KV cache must be float32 [B, KV, capacity, head_dim]");
  const int64_t capacity = k0.size(2), hd = k0.size(3);
  TORCH_CHECK(slot >= 0 && slot < capacity, "lmprof_native: slot ", slot, " outside the cache (", capacity, ")");
  TORCH_CHECK(key_valid.scalar_type() == at::kBool && key_valid.is_contiguous() && key_valid.size(0) == B &&
                  key_valid.size(1) == capacity,
              "lmprof_native: key_valid must be bool [B, capacity]");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.numel() == B * hd && sin.numel() == B * hd,
              "lmprof_native: cos and sin must be contiguous [B, head_dim]");
  const int64_t q_dim = n_heads * hd, kv_dim = n_kv_heads * hd;
  const int64_t qkv_dim = q_dim + 2 * kv_dim;
  const float eps = static_cast<float>(eps_d);

  at::Tensor x = embeddings.contiguous().clone();  // the residual stream [B, D]
  const auto opts = x.options();
  at::Tensor normed = at::empty({B, D}, opts);
  at::Tensor qkv = at::empty({B, qkv_dim}, opts);
  at::Tensor attn = at::empty({B, q_dim}, opts);
  float* xp = x.data_ptr<float>();
  float* np = normed.data_ptr<float>();
  float* qkvp = qkv.data_ptr<float>();
  const float* cosp = cos.data_ptr<float>();
  const float* sinp = sin.data_ptr<float>();
  at::Tensor gate_up, act;

  for (int64_t layer = 0; layer < L; ++layer) {
    RECORD_USER_SCOPE("module:layers." + std::to_string(layer));
    const at::Tensor* w = weights.data() + layer * kSlotsPerLayer;
    const at::Tensor &kc = k_cache[layer], &vc = v_cache[layer];
    TORCH_CHECK(kc.is_contiguous() && vc.is_contiguous() && kc.sizes() == k0.sizes() && vc.sizes() == k0.sizes(),
                "lmprof_native: layer ", layer, "'s KV cache is not contiguous [B, KV, capacity, head_dim]");
    {
      RECORD_USER_SCOPE(path(layer, "attention_norm"));
      rms_norm(xp, B, D, w[kAttnNorm].data_ptr<float>(), eps, np);
    }
    {
      RECORD_USER_SCOPE(path(layer, "attention"));
      const bool fused = w[kK].numel() == 0;
      const int64_t written = project(np, B, D, layer,
                                      {{w[kQ], w[kQBias], w[kQScale], fused ? "attention.qkv_proj" : "attention.q_proj"},
                                       {w[kK], w[kKBias], w[kKScale], "attention.k_proj"},
                                       {w[kV], w[kVBias], w[kVScale], "attention.v_proj"}},
                                      qkvp, qkv_dim);
      TORCH_CHECK(written == qkv_dim, "lmprof_native: q/k/v weights give ", written, " outputs, expected ", qkv_dim);
      {
        RECORD_FUNCTION("lmprof_native::rope_kv_write", c10::ArrayRef<const c10::IValue>{});
        float* kcp = kc.data_ptr<float>();
        float* vcp = vc.data_ptr<float>();
        for (int64_t b = 0; b < B; ++b) {
          float* row = qkvp + b * qkv_dim;
          rope(row, n_heads, hd, cosp + b * hd, sinp + b * hd);
          rope(row + q_dim, n_kv_heads, hd, cosp + b * hd, sinp + b * hd);
          for (int64_t g = 0; g < n_kv_heads; ++g) {
            const int64_t at_slot = ((b * n_kv_heads + g) * capacity + slot) * hd;
            std::copy(row + q_dim + g * hd, row + q_dim + (g + 1) * hd, kcp + at_slot);
            std::copy(row + q_dim + kv_dim + g * hd, row + q_dim + kv_dim + (g + 1) * hd, vcp + at_slot);
          }
        }
      }
      attend(qkvp, kc.data_ptr<float>(), vc.data_ptr<float>(), key_valid.data_ptr<bool>(),
             AttentionShape{B, n_heads, n_kv_heads, hd, capacity, slot, qkv_dim}, attn.data_ptr<float>());
      {
        RECORD_USER_SCOPE(path(layer, "attention.o_proj"));
        const Matrix o = matrix(w[kO], w[kOBias], w[kOScale], q_dim, "attention.o_proj");
        TORCH_CHECK(o.N == D, "lmprof_native: o_proj must give ", D, " outputs");
        matvec(attn.data_ptr<float>(), B, o, xp, D, true);
      }
    }
    {
      RECORD_USER_SCOPE(path(layer, "mlp_norm"));
      rms_norm(xp, B, D, w[kMlpNorm].data_ptr<float>(), eps, np);
    }
    {
      RECORD_USER_SCOPE(path(layer, "mlp"));
      const bool fused = w[kUp].numel() == 0;
      const int64_t two_i = fused ? w[kGate].size(0) : w[kGate].size(0) + w[kUp].size(0);
      const int64_t I = two_i / 2;
      if (!gate_up.defined()) {
        gate_up = at::empty({B, two_i}, opts);
        act = at::empty({B, I}, opts);
      }
      project(np, B, D, layer,
              {{w[kGate], w[kGateBias], w[kGateScale], fused ? "mlp.gate_up_proj" : "mlp.gate_proj"},
               {w[kUp], w[kUpBias], w[kUpScale], "mlp.up_proj"}},
              gate_up.data_ptr<float>(), two_i);
      silu_mul(gate_up.data_ptr<float>(), B, I, act.data_ptr<float>());
      {
        RECORD_USER_SCOPE(path(layer, "mlp.down_proj"));
        const Matrix down = matrix(w[kDown], w[kDownBias], w[kDownScale], I, "mlp.down_proj");
        TORCH_CHECK(down.N == D, "lmprof_native: down_proj must give ", D, " outputs");
        matvec(act.data_ptr<float>(), B, down, xp, D, true);
      }
    }
  }
  {
    RECORD_USER_SCOPE("module:norm");
    rms_norm(xp, B, D, final_norm.data_ptr<float>(), eps, np);
  }
  const Matrix head = matrix(lm_head, at::Tensor(), lm_head_scales, D, "lm_head");
  at::Tensor logits = at::empty({B, head.N}, opts);
  {
    RECORD_USER_SCOPE("module:lm_head");
    matvec(np, B, head, logits.data_ptr<float>(), head.N, false);
  }
  return logits;
}

// y [B, N] = x [B, K] . W[N, K]^T (* scales) (+ bias): the decode step's product alone, for probes and
// kernel-by-kernel benchmarks against F.linear.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                  const c10::optional<at::Tensor>& scales) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "lmprof_native::linear: x must be float32 [B, K]");
  const Matrix m = matrix(weight, bias.value_or(at::Tensor()), scales.value_or(at::Tensor()), x.size(1), "linear's weight");
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty({x.size(0), m.N}, x.options());
  matvec(xc.data_ptr<float>(), x.size(0), m, y.data_ptr<float>(), m.N, false);
  return y;
}

}  // namespace

TORCH_LIBRARY(lmprof_native, m) {
  m.def(
      "decode_step(Tensor embeddings, Tensor cos, Tensor sin, Tensor key_valid, int slot, Tensor[] weights, "
      "Tensor(a!)[] k_cache, Tensor(b!)[] v_cache, Tensor final_norm, Tensor lm_head, Tensor lm_head_scales, int n_heads, "
      "int n_kv_heads, float eps) -> Tensor");
  m.def("linear(Tensor x, Tensor weight, Tensor? bias=None, Tensor? scales=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(lmprof_native, CPU, m) {
  m.impl("decode_step", &decode_step);
  m.impl("linear", &linear);
}
