"""kernels.h builds and computes right without AVX-512: its AVX2 form (8 lanes, tiles of up to
4 activation rows, the hadd reduction) and, where the compiler has it, the generic one (no
intrinsics, no pinned registers), every tile forced in turn. The Python extension is built for this CPU only (-march=native), so
these paths are compiled here by hand, against a double-precision reference in C++."""

from __future__ import annotations

import platform
import shutil
import subprocess

import pytest

from lmprof.engine.native import SOURCE

CHECK = r"""
#include "kernels.h"
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>
using namespace lmprof_native;
int main() {
  std::mt19937 g(1);
  std::uniform_real_distribution<float> u(-1, 1);
  double worst = 0;
  for (int B : {1, 3, 4, 8, 9}) for (int N : {1, 5, 37}) for (int K : {16, 100}) for (int q : {0, 1})
  for (int tile : {0, 1, 2, 3}) {
    std::vector<float> W(N * K), x(B * K), y(B * N), scales(N), bias(N);
    std::vector<int8_t> W8(N * K);
    for (auto& v : W) v = u(g);
    for (auto& v : x) v = u(g);
    for (auto& v : scales) v = u(g);
    for (auto& v : bias) v = u(g);
    for (auto& v : W8) v = int8_t(int(u(g) * 127));
    Matrix m;
    m.N = N; m.K = K; m.bias = bias.data();
    if (q) { m.i8 = W8.data(); m.scales = scales.data(); } else { m.f32 = W.data(); }
    matvec_rows(x.data(), B, m, y.data(), N, false, 0, N / 2, tile);  // two threads' shares
    matvec_rows(x.data(), B, m, y.data(), N, false, N / 2, N, tile);
    for (int b = 0; b < B; ++b) for (int n = 0; n < N; ++n) {
      double d = 0;
      for (int k = 0; k < K; ++k) d += (q ? double(W8[n * K + k]) : double(W[n * K + k])) * x[b * K + k];
      d = (q ? d * scales[n] : d) + bias[n];
      worst = std::fmax(worst, std::fabs(d - y[b * N + n]) / (1 + std::fabs(d)));
    }
  }
  // attention: one row, one head of 64 over 20 keys, key 3 masked
  const int hd = 64, S = 20;
  std::vector<float> qkv(3 * hd), kc(S * hd), vc(S * hd), out(hd), scores(S);
  for (auto& v : qkv) v = u(g);
  for (auto& v : kc) v = u(g);
  for (auto& v : vc) v = u(g);
  bool valid[S];
  for (int t = 0; t < S; ++t) valid[t] = t != 3;
  AttentionShape shape{1, 1, 1, hd, S, S - 1, 3 * hd};
  attend_items(qkv.data(), kc.data(), vc.data(), valid, shape, out.data(), scores.data(), 0, 1);
  double w[S], total = 0, best = -1e30;
  for (int t = 0; t < S; ++t) {
    double d = 0;
    for (int i = 0; i < hd; ++i) d += double(qkv[i]) * kc[t * hd + i];
    w[t] = d / std::sqrt(double(hd));
    if (valid[t]) best = std::fmax(best, w[t]);
  }
  for (int t = 0; t < S; ++t) total += (w[t] = valid[t] ? std::exp(w[t] - best) : 0.0);
  for (int i = 0; i < hd; ++i) {
    double o = 0;
    for (int t = 0; t < S; ++t) o += w[t] / total * vc[t * hd + i];
    worst = std::fmax(worst, std::fabs(o - out[i]) / (1 + std::fabs(o)));
  }
  std::printf("worst relative error %.3g\n", worst);
  return worst < 1e-4 ? 0 : 1;
}
"""


def _targets() -> list[str]:
    if platform.machine() in ("x86_64", "AMD64"):
        return ["-march=x86-64-v3", "-march=x86-64"]  # AVX2 + FMA; SSE2 only
    return ["-march=native"]


@pytest.mark.parametrize("march", _targets())
def test_kernels_compute_right_without_avx512(tmp_path, march):
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    source = tmp_path / "check.cpp"
    source.write_text(CHECK)
    binary = tmp_path / "check"
    build = subprocess.run(
        [
            compiler,
            "-O2",
            march,
            "-fopenmp",
            "-fno-trapping-math",  # as the extension builds (native/__init__.py's CFLAGS)
            "-Wno-psabi",
            "-Wno-unknown-pragmas",
            f"-I{SOURCE.parent}",
            str(source),
            "-o",
            str(binary),
        ],
        capture_output=True,
        text=True,
    )
    if build.returncode != 0 and "bad value" in build.stderr and march in build.stderr:
        pytest.skip(f"this compiler does not know {march}")  # x86-64-v3 needs GCC 11
    assert build.returncode == 0, build.stderr[-2000:]
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


W8A8_USE = r"""
#if !LMPROF_HAS_W8A8
#error W8A8 not compiled in
#endif
void w8a8_use(const float* x, int64_t B, const Matrix& m, float* y) {  // instantiates the W8A8 templates
  QuantizedRows q;
  q.fill(x, B, m.K);
  matvec_rows_w8a8(q, B, m, y, m.N, false, 0, m.N);
}
"""


def test_kernels_build_for_avx512_vnni_where_this_cpu_cannot_run_them(tmp_path):
    """The AVX-512 forms (16 lanes, the shuffle-tree reduction, W8A8 with vpdpbusd) compile on
    any x86 machine, so an AVX2 machine's test run still catches a change that breaks them;
    whether they compute right is checked where the CPU runs them (test_engine_native.py)."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("needs an x86 C++ compiler")
    source = tmp_path / "check.cpp"
    source.write_text(CHECK + W8A8_USE)
    build = subprocess.run(
        [compiler, "-O2", "-march=icelake-server", "-fopenmp", "-fno-trapping-math", "-Wno-psabi", "-Wno-unknown-pragmas",
         f"-I{SOURCE.parent}", "-c", str(source), "-o", str(tmp_path / "check.o")],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
