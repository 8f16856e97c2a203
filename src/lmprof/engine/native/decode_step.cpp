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

#include <algorithm>
#include <cmath>
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

constexpr int64_t kRows = 4;  // weight rows per block: one pass over x feeds four outputs

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

// out_x[r] = dot(W row r, x), out_y[r] = dot(W row r, y) for four rows: eight independent
// accumulator chains keep the FMA units busy when the rows come from L1 (batch > 1).
template <typename T>
inline void dot4x2(const T* __restrict w, int64_t K, const float* __restrict x, const float* __restrict y,
                   float* out_x, float* out_y) {
  const T *w0 = w, *w1 = w + K, *w2 = w + 2 * K, *w3 = w + 3 * K;
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f, b0 = 0.f, b1 = 0.f, b2 = 0.f, b3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3, b0, b1, b2, b3)
  for (int64_t k = 0; k < K; ++k) {
    const float xk = x[k], yk = y[k];
    const float v0 = float(w0[k]), v1 = float(w1[k]), v2 = float(w2[k]), v3 = float(w3[k]);
    a0 += v0 * xk; a1 += v1 * xk; a2 += v2 * xk; a3 += v3 * xk;
    b0 += v0 * yk; b1 += v1 * yk; b2 += v2 * yk; b3 += v3 * yk;
  }
  out_x[0] = a0; out_x[1] = a1; out_x[2] = a2; out_x[3] = a3;
  out_y[0] = b0; out_y[1] = b1; out_y[2] = b2; out_y[3] = b3;
}

template <typename T>
inline void dot4(const T* __restrict w, int64_t K, const float* __restrict x, float* out) {
  const T *w0 = w, *w1 = w + K, *w2 = w + 2 * K, *w3 = w + 3 * K;
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
  for (int64_t k = 0; k < K; ++k) {
    const float xk = x[k];
    a0 += float(w0[k]) * xk; a1 += float(w1[k]) * xk; a2 += float(w2[k]) * xk; a3 += float(w3[k]) * xk;
  }
  out[0] = a0; out[1] = a1; out[2] = a2; out[3] = a3;
}

template <typename T>
inline float dot(const T* __restrict a, const float* __restrict b, int64_t n) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < n; ++k) acc += float(a[k]) * b[k];
  return acc;
}

// The rows [begin, end) of blocks of y = W . x for every batch row; see matvec.
template <typename T>
void matvec_blocks(const float* x, int64_t B, const T* W, const Matrix& m, float* y, int64_t y_stride,
                   bool accumulate, int64_t begin, int64_t end) {
  const int64_t K = m.K;
  float dx[kRows], dy[kRows];
  auto store = [&](int64_t b, int64_t n0, int64_t rows, const float* dots) {
    float* out = y + b * y_stride + n0;
    for (int64_t r = 0; r < rows; ++r) {
      float v = m.scales ? dots[r] * m.scales[n0 + r] : dots[r];
      if (m.bias) v += m.bias[n0 + r];
      out[r] = accumulate ? out[r] + v : v;
    }
  };
  for (int64_t blk = begin; blk < end; ++blk) {
    const int64_t n0 = blk * kRows;
    const int64_t rows = std::min(kRows, m.N - n0);
    const T* w = W + n0 * K;
    if (rows < kRows) {  // the last, partial block
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t r = 0; r < rows; ++r) dx[r] = dot(w + r * K, x + b * K, K);
        store(b, n0, rows, dx);
      }
      continue;
    }
    int64_t b = 0;
    for (; b + 1 < B; b += 2) {
      dot4x2(w, K, x + b * K, x + (b + 1) * K, dx, dy);
      store(b, n0, rows, dx);
      store(b + 1, n0, rows, dy);
    }
    if (b < B) {
      dot4(w, K, x + b * K, dx);
      store(b, n0, rows, dx);
    }
  }
}

// y[b, n] (+)= dot(W[n, :], x[b, :]) (* scale[n]) + bias[n] for b < B, n < N.
// Rows of y are y_stride apart, so several projections can fill one buffer side by side.
// Threads split the weight rows: each weight byte is read from memory once per call.
void matvec(const float* x, int64_t B, const Matrix& m, float* y, int64_t y_stride, bool accumulate) {
  RECORD_FUNCTION(m.i8 ? "lmprof_native::matvec_int8" : "lmprof_native::matvec", c10::ArrayRef<const c10::IValue>{});
  const int64_t blocks = (m.N + kRows - 1) / kRows;
  const int64_t row_bytes = m.K * (m.i8 ? 1 : int64_t(sizeof(float)));
  // Blocks of at least ~32 KB of weights per task, so a small projection is not split thin.
  const int64_t grain = std::max<int64_t>(1, (32 * 1024) / (kRows * row_bytes));
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    if (m.i8) {
      matvec_blocks(x, B, m.i8, m, y, y_stride, accumulate, begin, end);
    } else {
      matvec_blocks(x, B, m.f32, m, y, y_stride, accumulate, begin, end);
    }
  });
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
      for (int64_t t = 0; t < S; ++t) {
        p[t] = std::isinf(p[t]) ? 0.f : std::exp(p[t] - best);
        total += p[t];
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
  at::parallel_for(0, B * I, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const int64_t b = j / I, i = j % I;
      const float g = gate_up[b * 2 * I + i], u = gate_up[b * 2 * I + I + i];
      act[j] = g / (1.f + std::exp(-g)) * u;
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
