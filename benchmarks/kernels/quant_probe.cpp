// Would int4 weights, or int8 activations, pay on this CPU? One decode step's products at
// batch 1 on one core (the SmolLM2-135M shapes, streaming from huge pages), three ways:
//   int8 weight-only   lmprof's own kernel (kernels.h matvec_rows): the engine's int8 path
//   int4 weight-only   two weights a byte, one scale per row, fp32 activations: a lower bound
//                      on int4's cost (real int4 needs a scale per group of 32-128 weights
//                      for accuracy, which adds work)
//   W8A8 (VNNI)        int8 weights, activations quantized per row to int8 (+128, as u8),
//                      products by vpdpbusd: llama.cpp's q8_0 scheme
// Each kernel's outputs are checked against a double-precision reference first; a wrong
// kernel exits 1 instead of printing a time. Rounds alternate the kernels; best of each.
#include "kernels.h"

#include <immintrin.h>
#include <sys/mman.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

using namespace lmprof_native;

struct Shape { int64_t N, K; };

// 32 weights in 16 bytes: low nibbles are k .. k+15, high nibbles k+16 .. k+31, stored + 8.
static void int4_rows(const uint8_t* W, const float* x, int64_t N, int64_t K, const float* scales, float* y) {
  float xsum = 0.f;
  for (int64_t k = 0; k < K; ++k) xsum += x[k];
  const __m512i mask = _mm512_set1_epi32(0xF);
  const int64_t half = N / 2, row_bytes = K / 2;
  auto dot = [&](const uint8_t* w, __m512& lo, __m512& hi, int64_t k) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k / 2)));
    lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v, mask)), _mm512_loadu_ps(x + k), lo);
    hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4)), _mm512_loadu_ps(x + k + 16), hi);
  };
  for (int64_t i = 0; i < half; ++i) {  // rows i and half + i: two streams, as lmprof's pairs
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
    const uint8_t *wa = W + i * row_bytes, *wb = W + (half + i) * row_bytes;
    for (int64_t k = 0; k < K; k += 32) dot(wa, a0, a1, k), dot(wb, b0, b1, k);
    y[i] = (_mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) - 8.f * xsum) * scales[i];
    y[half + i] = (_mm512_reduce_add_ps(_mm512_add_ps(b0, b1)) - 8.f * xsum) * scales[half + i];
  }
}

#if defined(__AVX512VNNI__)
static void w8a8_rows(const int8_t* W, const float* x, int64_t N, int64_t K, const float* scales,
                      const int32_t* row_sums, uint8_t* xq, float* y) {
  float amax = 0.f;
  for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(x[k]));
  const float x_scale = amax > 0.f ? amax / 127.f : 1.f;
  for (int64_t k = 0; k < K; ++k) xq[k] = uint8_t(int(std::nearbyint(x[k] / x_scale)) + 128);
  const int64_t half = N / 2;
  for (int64_t i = 0; i < half; ++i) {
    __m512i a = _mm512_setzero_si512(), b = a;
    const int8_t *wa = W + i * K, *wb = W + (half + i) * K;
    for (int64_t k = 0; k < K; k += 64) {
      const __m512i xv = _mm512_loadu_si512(xq + k);
      a = _mm512_dpbusd_epi32(a, xv, _mm512_loadu_si512(wa + k));
      b = _mm512_dpbusd_epi32(b, xv, _mm512_loadu_si512(wb + k));
    }
    // (x_q + 128) . w = x_q . w + 128 sum(w): the row sums take the offset back out
    y[i] = float(_mm512_reduce_add_epi32(a) - 128 * row_sums[i]) * x_scale * scales[i];
    y[half + i] = float(_mm512_reduce_add_epi32(b) - 128 * row_sums[half + i]) * x_scale * scales[half + i];
  }
}
#endif

static double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 10;
  std::vector<Shape> shapes;
  for (int layer = 0; layer < 30; ++layer)
    for (Shape s : {Shape{960, 576}, Shape{576, 576}, Shape{3072, 576}, Shape{576, 1536}}) shapes.push_back(s);
  shapes.push_back({49152, 576});
  size_t weights = 0;
  for (Shape s : shapes) weights += s.N * s.K;
  auto arena = [](size_t bytes) {
    char* p = static_cast<char*>(mmap(nullptr, bytes + (2 << 20), PROT_READ | PROT_WRITE,
                                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    p = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(p) + (2 << 20) - 1) & ~uintptr_t((2 << 20) - 1));
    madvise(p, bytes, MADV_HUGEPAGE);
    return p;
  };
  int8_t* w8 = reinterpret_cast<int8_t*>(arena(weights));
  uint8_t* w4 = reinterpret_cast<uint8_t*>(arena(weights / 2));
  std::vector<int32_t> row_sums;
  std::vector<float> scales(49152), x(1536), y(49152), reference(49152);
  size_t off = 0;
  for (Shape s : shapes) {
    for (int64_t n = 0; n < s.N; ++n) {
      int32_t sum = 0;
      for (int64_t k = 0; k < s.K; ++k) {
        const size_t i = off + n * s.K + k;
        w8[i] = int8_t(int((i * 2654435761u) >> 11) % 255 - 127);
        sum += w8[i];
      }
      row_sums.push_back(sum);
    }
    for (size_t i = off / 2; i < (off + s.N * s.K) / 2; ++i) w4[i] = uint8_t((i * 2654435761u) >> 13);
    off += s.N * s.K;
  }
  for (size_t i = 0; i < scales.size(); ++i) scales[i] = 0.001f * float(1 + i % 7);
  for (size_t k = 0; k < x.size(); ++k) x[k] = 0.05f * std::sin(0.37f * float(k));

  // The check: the first matrix of each kind against double precision.
  const Shape s0 = shapes[0];
  double worst = 0;
  auto compare = [&](auto weight_of, bool quantized_x) {
    float amax = 0.f;
    for (int64_t k = 0; k < s0.K; ++k) amax = std::max(amax, std::fabs(x[k]));
    const float x_scale = amax / 127.f;
    for (int64_t n = 0; n < s0.N; ++n) {
      double d = 0;
      for (int64_t k = 0; k < s0.K; ++k)
        d += double(weight_of(n, k)) * (quantized_x ? std::nearbyint(x[k] / x_scale) * x_scale : x[k]);
      d *= scales[n];
      worst = std::max(worst, std::fabs(d - y[n]) / (1e-3 + std::fabs(d)));
    }
  };
  Matrix m0;
  m0.i8 = w8; m0.scales = scales.data(); m0.N = s0.N; m0.K = s0.K;
  matvec_rows(x.data(), 1, m0, y.data(), s0.N, false, 0, s0.N);
  compare([&](int64_t n, int64_t k) { return w8[n * s0.K + k]; }, false);
  int4_rows(w4, x.data(), s0.N, s0.K, scales.data(), y.data());
  compare([&](int64_t n, int64_t k) {
    const uint8_t byte = w4[(n * s0.K + (k / 32) * 32) / 2 + k % 16];
    return int((k % 32) < 16 ? byte & 0xF : byte >> 4) - 8;
  }, false);
  std::vector<uint8_t> xq(1536);
#if defined(__AVX512VNNI__)
  w8a8_rows(w8, x.data(), s0.N, s0.K, scales.data(), row_sums.data(), xq.data(), y.data());
  compare([&](int64_t n, int64_t k) { return w8[n * s0.K + k]; }, true);
#endif
  if (worst > 1e-3) {
    std::printf("a kernel is wrong: worst relative error %.3g\n", worst);
    return 1;
  }

  double best_int8 = 1e9, best_int4 = 1e9, best_w8a8 = 1e9;
  for (int r = 0; r < rounds; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    off = 0;
    for (Shape s : shapes) {
      Matrix m;
      m.i8 = w8 + off; m.scales = scales.data(); m.N = s.N; m.K = s.K;
      matvec_rows(x.data(), 1, m, y.data(), s.N, false, 0, s.N);
      off += s.N * s.K;
    }
    best_int8 = std::min(best_int8, seconds_since(t0));
    t0 = std::chrono::steady_clock::now();
    off = 0;
    for (Shape s : shapes) int4_rows(w4 + off / 2, x.data(), s.N, s.K, scales.data(), y.data()), off += s.N * s.K;
    best_int4 = std::min(best_int4, seconds_since(t0));
#if defined(__AVX512VNNI__)
    t0 = std::chrono::steady_clock::now();
    off = 0;
    size_t row = 0;
    for (Shape s : shapes) {
      w8a8_rows(w8 + off, x.data(), s.N, s.K, scales.data(), row_sums.data() + row, xq.data(), y.data());
      off += s.N * s.K, row += s.N;
    }
    best_w8a8 = std::min(best_w8a8, seconds_since(t0));
#endif
  }
  std::printf("one decode step's products, batch 1, one thread, best of %d rounds (checked: worst relative error %.2g)\n",
              rounds, worst);
  std::printf("  int8 weight-only  %6.2f ms  %5.1f GB/s of weights (%.0f MB)\n", best_int8 * 1e3, weights / best_int8 / 1e9, weights / 1e6);
  std::printf("  int4 weight-only  %6.2f ms  %5.1f GB/s of weights (%.0f MB)  %.2fx int8\n", best_int4 * 1e3,
              weights / 2 / best_int4 / 1e9, weights / 2e6, best_int8 / best_int4);
#if defined(__AVX512VNNI__)
  std::printf("  W8A8 (VNNI)       %6.2f ms  %5.1f GB/s of weights (%.0f MB)  %.2fx int8\n", best_w8a8 * 1e3,
              weights / best_w8a8 / 1e9, weights / 1e6, best_int8 / best_w8a8);
#else
  std::printf("  W8A8 (VNNI)       skipped: this CPU (or -march=native) has no AVX512-VNNI\n");
#endif
  return 0;
}
