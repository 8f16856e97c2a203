// lmprof's native decode step: one call runs a whole Llama-family decoder (RMSNorm, rotary
// GQA attention over a static KV cache, SwiGLU MLP, final norm, output head) for one new
// token per row, on CPU, with fp32 activations and fp32 or int8 weight-only matrices.
//
// Why it exists: at batch 1 a decode step reads every weight once and does little else, so
// its floor is weight bytes over memory bandwidth. PyTorch's eager path adds ~50 dispatched
// ops per layer on top, and its fp32 one-row product (MKL sgemm with M = 1) streams about
// half the machine's read bandwidth on one thread. Here Python makes one call per step; the
// call checks every tensor first, then runs all layers inside one OpenMP parallel region
// (torch's own thread pool), the threads meeting at a barrier between stages instead of
// starting a parallel region per product. The arithmetic is in kernels.h.
//
// When torch.profiler is on, thread 0 opens the same "module:<path>" ranges lmprof's module
// hooks open for the Python model, and each stage is a "lmprof_native::*" op inside them
// (ending after the barrier, so it covers every thread's share), so the deep views (step
// breakdown, module table, flame graph) read this path like any other.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/record_function.h>
#include <omp.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kernels.h"

namespace {

using lmprof_native::Matrix;

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

Matrix matrix(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& scales, int64_t in_features,
              const std::string& what) {
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
                    (scales.numel() == m.N || scales.numel() == 2 * m.N) && scales.is_contiguous(),
                "lmprof_native: ", what, " must be float32, or int8 with float32 scales [out] (or [2, out]: ",
                "scales and row sums, for W8A8); got ", weight.scalar_type());
    m.i8 = weight.data_ptr<int8_t>();
    m.scales = scales.data_ptr<float>();
    if (scales.numel() == 2 * m.N) {
      TORCH_CHECK(LMPROF_HAS_W8A8, "lmprof_native: ", what,
                  ": W8A8 needs a CPU with AVX2 or AVX512-VNNI (this build has neither); use int8 weight-only");
      m.row_sums = m.scales + m.N;
    }
  }
  if (present(bias)) {
    TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.numel() == m.N && bias.is_contiguous(),
                "lmprof_native: ", what, "'s bias must be float32 [out]");
    m.bias = bias.data_ptr<float>();
  }
  return m;
}

const float* vector_data(const at::Tensor& t, int64_t n, const std::string& what) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == n, "lmprof_native: ", what,
              " must be float32 [", n, "]");
  return t.data_ptr<float>();
}

// One projection of a stage, with the module path the profiler shows it under.
struct Projection {
  Matrix m;
  std::string module;  // e.g. "layers.3.attention.qkv_proj"
};

// Everything a layer's stages read and write, checked before the parallel region starts
// (an exception must not leave an OpenMP region).
struct LayerPlan {
  std::string path;  // "layers.3"
  const float* attention_norm;
  std::vector<Projection> qkv;  // q, k, v, or one fused matrix; outputs side by side
  std::vector<Projection> o;  // one
  const float* mlp_norm;
  std::vector<Projection> gate_up;  // gate, up, or one fused matrix
  std::vector<Projection> down;  // one
  float* k_cache;  // [B, KV, capacity, hd]
  float* v_cache;
};

std::vector<Projection> projections(const at::Tensor* w, std::initializer_list<std::pair<int64_t, const char*>> parts,
                                    int64_t in_features, int64_t outputs, const std::string& prefix) {
  std::vector<Projection> out;
  int64_t columns = 0;
  for (const auto& [slot, name] : parts) {
    if (!present(w[slot])) continue;
    const std::string module = prefix + name;
    out.push_back({matrix(w[slot], w[slot + 1], w[slot + 2], in_features, module), module});
    columns += out.back().m.N;
  }
  TORCH_CHECK(columns == outputs, "lmprof_native: ", prefix, " projections give ", columns, " outputs, expected ",
              outputs);
  return out;
}

// The slice [begin, end) of n items that thread `tid` of `threads` owns (contiguous, as
// at::parallel_for splits); empty when there are fewer chunks of `grain` than threads.
std::pair<int64_t, int64_t> share(int64_t n, int64_t grain, int tid, int threads) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(threads, (n + grain - 1) / grain));
  const int64_t chunk = (n + chunks - 1) / chunks;
  const int64_t begin = std::min(n, tid * chunk);
  return {begin, tid < chunks ? std::min(n, begin + chunk) : begin};
}

// At least ~32 KB of weights per thread, so a small projection is not split thin.
int64_t row_grain(const Matrix& m) {
  const int64_t row_bytes = m.K * (m.i8 ? 1 : int64_t(sizeof(float)));
  return std::max<int64_t>(2, (32 * 1024) / row_bytes);
}

// A profiler range opened by thread 0 only, so each range appears once on the caller's
// thread; it stays open until destroyed (after the stage's barrier).
class MainThreadRange {
 public:
  MainThreadRange(int tid, at::RecordScope scope, const std::string& name) {
    if (tid != 0) return;
    range_.emplace(scope);
    if (range_->isActive()) range_->before(name);
  }

 private:
  std::optional<at::RecordFunction> range_;
};

MainThreadRange module_range(int tid, const std::string& path) {
  return MainThreadRange(tid, at::RecordScope::USER_SCOPE, "module:" + path);
}

MainThreadRange op_range(int tid, const char* op) {
  return MainThreadRange(tid, at::RecordScope::FUNCTION, op);
}

const char* matvec_op(const Matrix& m) {
  if (m.row_sums) return "lmprof_native::matvec_w8a8";
  return m.i8 ? "lmprof_native::matvec_int8" : "lmprof_native::matvec";
}

// A thread's share of one projection, from float activations or (W8A8) quantized ones.
void matvec_share(const float* in, const lmprof_native::QuantizedRows& quantized, int64_t B, const Matrix& m,
                  float* out, int64_t out_stride, bool accumulate, int64_t begin, int64_t end,
                  int tile_rows = lmprof_native::kTileAuto) {
#if LMPROF_HAS_W8A8
  if (m.row_sums) {
    lmprof_native::matvec_rows_w8a8(quantized, B, m, out, out_stride, accumulate, begin, end);
    return;
  }
#endif
  (void)quantized;
  lmprof_native::matvec_rows(in, B, m, out, out_stride, accumulate, begin, end, tile_rows);
}

// Every thread's share of each projection, outputs side by side in out [B, out_stride]. W8A8
// parts read `quantized`, which each thread fills from `in` itself (a few KB: cheaper than a
// barrier).
void project(int tid, int threads, const float* in, int64_t B, const std::vector<Projection>& parts, float* out,
             int64_t out_stride, bool accumulate, lmprof_native::QuantizedRows& quantized) {
  if (std::any_of(parts.begin(), parts.end(), [](const Projection& p) { return p.m.row_sums != nullptr; })) {
    MainThreadRange op(op_range(tid, "lmprof_native::quantize_rows"));
    quantized.fill(in, B, parts[0].m.K);
  }
  int64_t column = 0;
  for (const Projection& part : parts) {
    MainThreadRange module(module_range(tid, part.module));
    MainThreadRange op(op_range(tid, matvec_op(part.m)));
    const auto [begin, end] = share(part.m.N, row_grain(part.m), tid, threads);
    matvec_share(in, quantized, B, part.m, out + column, out_stride, accumulate, begin, end);
    column += part.m.N;
    // No barrier between the projections of one stage: their outputs do not overlap.
  }
}

// The rows' embeddings [B, D]: rows of a float32 table, or of the tied head's int8 table times
// its per-row scales (what Int8Embedding computes in float32). The scales are the head's: [V],
// or for W8A8 [2V] with the row sums after them.
at::Tensor embed(const at::Tensor& token_ids, const at::Tensor& table, const at::Tensor& scales) {
  TORCH_CHECK(token_ids.dim() == 1 && token_ids.scalar_type() == at::kLong, "lmprof_native: tokens must be int64 [B]");
  const at::Tensor tokens = token_ids.contiguous();  // a column of a [B, T] batch is strided
  TORCH_CHECK(table.dim() == 2 && table.is_contiguous() &&
                  (table.scalar_type() == at::kFloat || table.scalar_type() == at::kChar),
              "lmprof_native: the embedding table must be contiguous float32 or int8 [V, D]");
  const bool i8 = table.scalar_type() == at::kChar;
  const int64_t B = tokens.size(0), V = table.size(0), D = table.size(1);
  TORCH_CHECK(!i8 || (scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.numel() >= V),
              "lmprof_native: an int8 embedding table needs float32 scales [V]");
  at::Tensor x = at::empty({B, D}, tokens.options().dtype(at::kFloat));
  const int64_t* ids = tokens.data_ptr<int64_t>();
  float* out = x.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t id = ids[b];
    TORCH_CHECK(id >= 0 && id < V, "lmprof_native: token ", id, " outside the vocabulary (", V, ")");
    if (i8) {
      const int8_t* row = table.data_ptr<int8_t>() + id * D;
      const float scale = scales.data_ptr<float>()[id];
      for (int64_t d = 0; d < D; ++d) out[b * D + d] = static_cast<float>(row[d]) * scale;
    } else {
      const float* row = table.data_ptr<float>() + id * D;
      std::copy(row, row + D, out + b * D);
    }
  }
  return x;
}

// One new token per row: tokens [B] at rope positions [B] (rows of the rope_cos/rope_sin
// tables [rows, head_dim]) write cache slot `slot`. The step marks that slot valid in
// key_valid and advances every row's position by one, as generate.py's _claim_slots does for
// the torch path, so Python runs no op of its own between steps.
at::Tensor decode_step(const at::Tensor& tokens, const at::Tensor& embedding, const at::Tensor& embedding_scales,
                       at::Tensor& positions, const at::Tensor& rope_cos, const at::Tensor& rope_sin,
                       at::Tensor& key_valid, int64_t slot, at::TensorList weights, at::TensorList k_cache,
                       at::TensorList v_cache, const at::Tensor& final_norm, const at::Tensor& lm_head,
                       const at::Tensor& lm_head_scales, int64_t n_heads, int64_t n_kv_heads, double eps_d) {
  TORCH_CHECK(embedding.dim() == 2, "lmprof_native: the embedding table must be [V, D]");
  const int64_t B = tokens.numel(), D = embedding.size(1);
  TORCH_CHECK(positions.dim() == 1 && positions.scalar_type() == at::kLong && positions.is_contiguous() &&
                  positions.size(0) == B,
              "lmprof_native: positions must be int64 [B]");
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
  TORCH_CHECK(rope_cos.dim() == 2 && rope_cos.scalar_type() == at::kFloat && rope_cos.is_contiguous() &&
                  rope_cos.size(1) == hd && rope_sin.sizes() == rope_cos.sizes() &&
                  rope_sin.scalar_type() == at::kFloat && rope_sin.is_contiguous(),
              "lmprof_native: rope_cos and rope_sin must be contiguous float32 [positions, head_dim]");
  int64_t* positionp = positions.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(positionp[b] >= 0 && positionp[b] < rope_cos.size(0), "lmprof_native: position ", positionp[b],
                " outside the rope tables (", rope_cos.size(0), " rows)");
  }
  const int64_t q_dim = n_heads * hd, kv_dim = n_kv_heads * hd;
  const int64_t qkv_dim = q_dim + 2 * kv_dim;
  const float eps = static_cast<float>(eps_d);

  std::vector<LayerPlan> plans;
  int64_t I = 0;
  for (int64_t layer = 0; layer < L; ++layer) {
    const at::Tensor* w = weights.data() + layer * kSlotsPerLayer;
    const at::Tensor &kc = k_cache[layer], &vc = v_cache[layer];
    TORCH_CHECK(kc.is_contiguous() && vc.is_contiguous() && kc.sizes() == k0.sizes() && vc.sizes() == k0.sizes(),
                "lmprof_native: layer ", layer, "'s KV cache is not contiguous [B, KV, capacity, head_dim]");
    const std::string path = "layers." + std::to_string(layer);
    const bool fused_qkv = !present(w[kK]), fused_gate_up = !present(w[kUp]);
    TORCH_CHECK(present(w[kGate]), "lmprof_native: ", path, " has no gate projection");
    const int64_t layer_i = (fused_gate_up ? w[kGate].size(0) : 2 * w[kGate].size(0)) / 2;
    TORCH_CHECK(I == 0 || layer_i == I, "lmprof_native: layers differ in MLP width");
    I = layer_i;
    LayerPlan plan{path,
                   vector_data(w[kAttnNorm], D, path + ".attention_norm"),
                   projections(w, {{kQ, fused_qkv ? ".attention.qkv_proj" : ".attention.q_proj"},
                                   {kK, ".attention.k_proj"}, {kV, ".attention.v_proj"}},
                               D, qkv_dim, path),
                   projections(w, {{kO, ".attention.o_proj"}}, q_dim, D, path),
                   vector_data(w[kMlpNorm], D, path + ".mlp_norm"),
                   projections(w, {{kGate, fused_gate_up ? ".mlp.gate_up_proj" : ".mlp.gate_proj"}, {kUp, ".mlp.up_proj"}},
                               D, 2 * I, path),
                   projections(w, {{kDown, ".mlp.down_proj"}}, I, D, path),
                   kc.data_ptr<float>(),
                   vc.data_ptr<float>()};
    plans.push_back(std::move(plan));
  }
  const float* final_norm_p = vector_data(final_norm, D, "norm");
  const std::vector<Projection> head{{matrix(lm_head, at::Tensor(), lm_head_scales, D, "lm_head"), "lm_head"}};
  const int64_t V = head[0].m.N;

  at::Tensor x;  // the residual stream [B, D]
  {
    RECORD_USER_SCOPE("module:embed_tokens");
    x = embed(tokens, embedding, embedding_scales);
  }
  bool* validp = key_valid.data_ptr<bool>();
  for (int64_t b = 0; b < B; ++b) validp[b * capacity + slot] = true;  // the step's own key
  const auto opts = x.options();
  at::Tensor normed = at::empty({B, D}, opts), qkv = at::empty({B, qkv_dim}, opts);
  at::Tensor attn = at::empty({B, q_dim}, opts), gate_up = at::empty({B, 2 * I}, opts);
  at::Tensor act = at::empty({B, I}, opts), logits = at::empty({B, V}, opts);
  float *xp = x.data_ptr<float>(), *np = normed.data_ptr<float>(), *qkvp = qkv.data_ptr<float>();
  float *attnp = attn.data_ptr<float>(), *gup = gate_up.data_ptr<float>(), *actp = act.data_ptr<float>();
  float* logitsp = logits.data_ptr<float>();
  const lmprof_native::AttentionShape shape{B, n_heads, n_kv_heads, hd, capacity, slot, qkv_dim};
  // torch.set_num_threads sets OpenMP's thread count, so this region runs on torch's own
  // pool with torch's intra-op thread count (one libgomp in the process).
#pragma omp parallel
  {
    const int tid = omp_get_thread_num();
    const int team = omp_get_num_threads();
    std::vector<float> scores(slot + 1);
    lmprof_native::QuantizedRows quantized;  // this thread's W8A8 activations
    // normed = RMSNorm(x) with `weight`, every thread its rows, all done at the barrier.
    auto norm_stage = [&](const std::string& module_path, const float* weight) {
      MainThreadRange module(module_range(tid, module_path));
      MainThreadRange op(op_range(tid, "lmprof_native::rms_norm"));
      const auto [begin, end] = share(B, 1, tid, team);
      lmprof_native::rms_norm_rows(xp, D, weight, eps, np, begin, end);
#pragma omp barrier
    };
    for (const LayerPlan& plan : plans) {
      MainThreadRange layer(module_range(tid, plan.path));
      norm_stage(plan.path + ".attention_norm", plan.attention_norm);
      {
        MainThreadRange module(module_range(tid, plan.path + ".attention"));
        project(tid, team, np, B, plan.qkv, qkvp, qkv_dim, false, quantized);
#pragma omp barrier
        {
          MainThreadRange op(op_range(tid, "lmprof_native::rope_kv_write"));
          const auto [begin, end] = share(B, 1, tid, team);
          for (int64_t b = begin; b < end; ++b) {
            float* row = qkvp + b * qkv_dim;
            const float* cosp = rope_cos.data_ptr<float>() + positionp[b] * hd;
            const float* sinp = rope_sin.data_ptr<float>() + positionp[b] * hd;
            lmprof_native::rope(row, n_heads, hd, cosp, sinp);
            lmprof_native::rope(row + q_dim, n_kv_heads, hd, cosp, sinp);
            for (int64_t g = 0; g < n_kv_heads; ++g) {
              const int64_t at_slot = ((b * n_kv_heads + g) * capacity + slot) * hd;
              std::copy(row + q_dim + g * hd, row + q_dim + (g + 1) * hd, plan.k_cache + at_slot);
              std::copy(row + q_dim + kv_dim + g * hd, row + q_dim + kv_dim + (g + 1) * hd, plan.v_cache + at_slot);
            }
          }
#pragma omp barrier
        }
        {
          MainThreadRange op(op_range(tid, "lmprof_native::attention"));
          const auto [begin, end] = share(B * n_heads, 1, tid, team);
          lmprof_native::attend_items(qkvp, plan.k_cache, plan.v_cache, validp, shape, attnp, scores.data(), begin,
                                      end);
#pragma omp barrier
        }
        project(tid, team, attnp, B, plan.o, xp, D, true, quantized);  // x += o_proj(attention)
#pragma omp barrier
      }
      norm_stage(plan.path + ".mlp_norm", plan.mlp_norm);
      {
        MainThreadRange module(module_range(tid, plan.path + ".mlp"));
        project(tid, team, np, B, plan.gate_up, gup, 2 * I, false, quantized);
#pragma omp barrier
        {
          MainThreadRange op(op_range(tid, "lmprof_native::silu_mul"));
          const auto [begin, end] = share(B * I, 256, tid, team);
          lmprof_native::silu_mul_items(gup, I, actp, begin, end);
#pragma omp barrier
        }
        project(tid, team, actp, B, plan.down, xp, D, true, quantized);  // x += down_proj(act)
#pragma omp barrier
      }
    }
    norm_stage("norm", final_norm_p);
    project(tid, team, np, B, head, logitsp, V, false, quantized);
  }
  for (int64_t b = 0; b < B; ++b) ++positionp[b];
  return logits;
}

// y [B, N] = x [B, K] . W[N, K]^T (* scales) (+ bias): the decode step's product alone, for
// probes and kernel-by-kernel benchmarks against F.linear. tile_rows: 0 as the decode step
// chooses, 1, 2 or 3 to force a tile (kernels.h, TileRows).
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                  const c10::optional<at::Tensor>& scales, int64_t tile_rows) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "lmprof_native::linear: x must be float32 [B, K]");
  TORCH_CHECK(tile_rows >= lmprof_native::kTileAuto && tile_rows <= lmprof_native::kTileTriples,
              "lmprof_native::linear: tile_rows must be 0 (auto), 1, 2 or 3; got ", tile_rows);
  const Matrix m =
      matrix(weight, bias.value_or(at::Tensor()), scales.value_or(at::Tensor()), x.size(1), "linear's weight");
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty({x.size(0), m.N}, x.options());
  RECORD_FUNCTION(matvec_op(m), c10::ArrayRef<const c10::IValue>{});
  lmprof_native::QuantizedRows quantized;
  if (m.row_sums) quantized.fill(xc.data_ptr<float>(), x.size(0), m.K);
  at::parallel_for(0, m.N, row_grain(m), [&](int64_t begin, int64_t end) {
    matvec_share(xc.data_ptr<float>(), quantized, x.size(0), m, y.data_ptr<float>(), m.N, false, begin, end,
                 static_cast<int>(tile_rows));
  });
  return y;
}

// tokens [B] (int64) = the argmax of each row of logits [B, V] (float32): greedy decoding's
// pick, with torch.argmax's ties (the first) and NaNs (the first NaN wins).
at::Tensor argmax_rows(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat && logits.is_contiguous(),
              "lmprof_native::argmax_rows: logits must be contiguous float32 [B, V]");
  const int64_t B = logits.size(0), V = logits.size(1);
  TORCH_CHECK(V > 0, "lmprof_native::argmax_rows: logits have no columns");
  at::Tensor tokens = at::empty({B}, logits.options().dtype(at::kLong));
  const float* x = logits.data_ptr<float>();
  int64_t* out = tokens.data_ptr<int64_t>();
  RECORD_FUNCTION("lmprof_native::argmax_rows", c10::ArrayRef<const c10::IValue>{});
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) out[b] = lmprof_native::argmax(x + b * V, V);
  });
  return tokens;
}

// One decode step's greedy pick in one op, for generate.py's loop: tokens [B] = the argmax of
// each row (argmax_rows' rule), or pad_token_id for a row already finished; then a row whose
// token is in eos [n] (int64) finishes. Four torch ops (argmax, where, isin, or) did this; each
// cost tens of microseconds between steps, with the caches just flushed by the weights.
at::Tensor pick_greedy(const at::Tensor& logits, at::Tensor& finished, const at::Tensor& eos, int64_t pad_token_id) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat && logits.is_contiguous(),
              "lmprof_native::pick_greedy: logits must be contiguous float32 [B, V]");
  const int64_t B = logits.size(0), V = logits.size(1);
  TORCH_CHECK(V > 0, "lmprof_native::pick_greedy: logits have no columns");
  TORCH_CHECK(finished.dim() == 1 && finished.size(0) == B && finished.scalar_type() == at::kBool &&
                  finished.is_contiguous(),
              "lmprof_native::pick_greedy: finished must be bool [B]");
  TORCH_CHECK(eos.dim() == 1 && eos.scalar_type() == at::kLong && eos.is_contiguous(),
              "lmprof_native::pick_greedy: eos must be int64 [n]");
  at::Tensor tokens = at::empty({B}, logits.options().dtype(at::kLong));
  const float* x = logits.data_ptr<float>();
  int64_t* out = tokens.data_ptr<int64_t>();
  bool* done = finished.data_ptr<bool>();
  const int64_t* stop = eos.data_ptr<int64_t>();
  const int64_t n_stop = eos.numel();
  RECORD_FUNCTION("lmprof_native::pick_greedy", c10::ArrayRef<const c10::IValue>{});
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      out[b] = done[b] ? pad_token_id : lmprof_native::argmax(x + b * V, V);
      done[b] = done[b] || std::find(stop, stop + n_stop, out[b]) != stop + n_stop;
    }
  });
  return tokens;
}

}  // namespace

TORCH_LIBRARY(lmprof_native, m) {
  m.def(
      "decode_step(Tensor tokens, Tensor embedding, Tensor embedding_scales, Tensor(c!) positions, "
      "Tensor rope_cos, Tensor rope_sin, Tensor(d!) key_valid, int slot, Tensor[] weights, "
      "Tensor(a!)[] k_cache, Tensor(b!)[] v_cache, Tensor final_norm, Tensor lm_head, Tensor lm_head_scales, "
      "int n_heads, int n_kv_heads, float eps) -> Tensor");
  m.def("linear(Tensor x, Tensor weight, Tensor? bias=None, Tensor? scales=None, int tile_rows=0) -> Tensor");
  m.def("argmax_rows(Tensor logits) -> Tensor");
  m.def("pick_greedy(Tensor logits, Tensor(a!) finished, Tensor eos, int pad_token_id) -> Tensor");
  // No tensors to dispatch on: one kernel for every backend. Sets the distances of narrow and
  // wide tiles (kernels.h, prefetch_bytes); returns the previous pair.
  m.def("set_prefetch(int bytes, int wide_bytes) -> int[]", [](int64_t bytes, int64_t wide_bytes) {
    TORCH_CHECK(bytes >= 0 && wide_bytes >= 0, "lmprof_native::set_prefetch: distances must be >= 0, got ", bytes,
                " and ", wide_bytes);
    return std::vector<int64_t>{std::exchange(lmprof_native::prefetch_bytes, bytes),
                                std::exchange(lmprof_native::prefetch_bytes_wide, wide_bytes)};
  });
  m.def("prefetch() -> int[]", []() {  // what the kernels hold
    return std::vector<int64_t>{lmprof_native::prefetch_bytes, lmprof_native::prefetch_bytes_wide};
  });
}

TORCH_LIBRARY_IMPL(lmprof_native, CPU, m) {
  m.impl("decode_step", &decode_step);
  m.impl("linear", &linear);
  m.impl("argmax_rows", &argmax_rows);
  m.impl("pick_greedy", &pick_greedy);
}
