// Standalone check of the MatMulBlockInt4 CPU kernels (no ONNX Runtime needed), for
// cross-built targets run under qemu-user: reads cases written by numpy
// (scripts/aarch64/make_cases.py) and compares every kernel table this build has
// (scalar, and neon on aarch64) with the numpy reference outputs.
//
//   kernel_check CASE_DIR
//
// CASE_DIR/cases.txt, one case per line:
//   name M K N block_size zp(none|packed|float) int8_a(0|1) force_path(0|1|2) tolerance
// and per case the raw little-endian files <name>.A (f32 [M,K]), .packed (u8 [N,row_bytes]),
// .scales (f32 [N,n_blocks]), .zp (u8 [N,zp_bytes] or f32 [N,n_blocks]), .ref (f32 [M,N]).
// The error is max|y - ref| / max(max|ref|, 1). On aarch64 the int8 path (accuracy_level
// 4) of the neon kernel must also equal the scalar kernel bit for bit. Exit status 0 when
// every case passes.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "kernel.h"
#include "onnxq/block_int4_format.h"

using namespace onnxq::ops;
namespace fmt = onnxq::block_int4;

namespace {

template <class T>
bool read_file(const std::string& path, std::vector<T>* out, size_t count) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  out->resize(count);
  f.read(reinterpret_cast<char*>(out->data()), static_cast<std::streamsize>(count * sizeof(T)));
  return static_cast<size_t>(f.gcount()) == count * sizeof(T);
}

void serial_for(void*, size_t total, void (*task)(void*, size_t), void* ctx) {
  for (size_t i = 0; i < total; ++i) task(ctx, i);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CASE_DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  std::ifstream list(dir + "/cases.txt");
  if (!list) {
    std::fprintf(stderr, "cannot read %s/cases.txt\n", dir.c_str());
    return 2;
  }
  std::vector<const IsaKernels*> tables = {kernels_scalar()};
#if defined(ONNXQ_NEON)
  tables.push_back(kernels_neon());
#endif
  const Runner runner{serial_for, nullptr};
  int failures = 0, cases = 0;
  std::string line;
  while (std::getline(list, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream in(line);
    std::string name, zp_kind;
    int64_t M, K, N, bs;
    int int8_a, force;
    double tol;
    if (!(in >> name >> M >> K >> N >> bs >> zp_kind >> int8_a >> force >> tol)) {
      std::fprintf(stderr, "bad line: %s\n", line.c_str());
      return 2;
    }
    ++cases;
    const int64_t nb = fmt::n_blocks(K, bs), row_bytes = fmt::row_bytes(K, bs), zp_bytes = fmt::zero_point_bytes(K, bs);
    std::vector<float> A, scales, ref, zpf;
    std::vector<uint8_t> packed, zpp;
    const std::string base = dir + "/" + name;
    bool ok = read_file(base + ".A", &A, static_cast<size_t>(M * K)) &&
              read_file(base + ".packed", &packed, static_cast<size_t>(N * row_bytes)) &&
              read_file(base + ".scales", &scales, static_cast<size_t>(N * nb)) &&
              read_file(base + ".ref", &ref, static_cast<size_t>(M * N));
    if (zp_kind == "packed") ok = ok && read_file(base + ".zp", &zpp, static_cast<size_t>(N * zp_bytes));
    if (zp_kind == "float") ok = ok && read_file(base + ".zp", &zpf, static_cast<size_t>(N * nb));
    if (!ok) {
      std::fprintf(stderr, "%s: missing or short data files\n", name.c_str());
      return 2;
    }
    Weights w;
    w.packed = packed.data();
    w.scales = scales.data();
    w.zp_packed = zp_kind == "packed" ? zpp.data() : nullptr;
    w.zp_float = zp_kind == "float" ? zpf.data() : nullptr;
    w.K = K, w.N = N, w.block_size = bs, w.n_blocks = nb, w.row_bytes = row_bytes, w.zp_bytes = zp_bytes;
    double ref_max = 1.0;
    for (float r : ref) ref_max = std::fmax(ref_max, std::fabs(r));
    std::vector<std::vector<float>> outs;
    for (const IsaKernels* t : tables) {
      std::vector<float> Y(static_cast<size_t>(M * N), std::nanf(""));
      Problem p;
      p.A = A.data(), p.M = M, p.lda = K, p.Y = Y.data(), p.ldy = N, p.int8_a = int8_a != 0, p.force_path = force;
      const int status = t->matmul(w, p, runner);
      double err = 0;
      for (size_t i = 0; i < Y.size(); ++i) {
        const double e = std::fabs(static_cast<double>(Y[i]) - ref[i]);
        err = std::isnan(e) ? INFINITY : std::fmax(err, e);
      }
      const double rel = err / ref_max;
      const bool pass = status == kOk && rel <= tol;
      failures += !pass;
      std::printf("%-28s %-6s M=%-3lld K=%-4lld N=%-3lld bs=%-3lld zp=%-6s int8=%d rel_err=%.3g tol=%.1g %s\n",
                  name.c_str(), t->name, static_cast<long long>(M), static_cast<long long>(K),
                  static_cast<long long>(N), static_cast<long long>(bs), zp_kind.c_str(), int8_a, rel, tol,
                  pass ? "PASS" : "FAIL");
      outs.push_back(std::move(Y));
    }
    if (int8_a && outs.size() > 1) {  // every ISA computes the int8 path bit for bit alike
      const bool same = std::memcmp(outs[0].data(), outs[1].data(), outs[0].size() * sizeof(float)) == 0;
      failures += !same;
      std::printf("%-28s neon == scalar bit for bit: %s\n", name.c_str(), same ? "PASS" : "FAIL");
    }
  }
  // half <-> float conversions agree with the scalar reference on every half value
  for (const IsaKernels* t : tables) {
    std::vector<uint16_t> h(65536), back(65536);
    std::vector<float> f(65536);
    for (int i = 0; i < 65536; ++i) h[i] = static_cast<uint16_t>(i);
    t->half_to_float(h.data(), f.data(), h.size());
    int bad = 0;
    for (int i = 0; i < 65536; ++i) {
      const float r = half_to_float_scalar(h[i]);
      if (!(std::memcmp(&r, &f[i], 4) == 0 || (std::isnan(r) && std::isnan(f[i])))) ++bad;
    }
    t->float_to_half(f.data(), back.data(), f.size());
    for (int i = 0; i < 65536; ++i)
      if (!std::isnan(f[i]) && back[i] != h[i]) ++bad;
    std::printf("half<->float %-6s %s (%d mismatches)\n", t->name, bad ? "FAIL" : "PASS", bad);
    failures += bad != 0;
  }
  std::printf("%d cases x %zu kernel tables: %s\n", cases, tables.size(), failures ? "FAILED" : "all passed");
  return failures ? 1 : 0;
}
