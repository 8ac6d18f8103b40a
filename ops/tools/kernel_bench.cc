// Kernel micro-benchmark without ORT (development tool; built with -DONNXQ_BUILD_KERNEL_BENCH=ON).
//   kernel_bench ISA M K N block_size int8(0/1) [path 0/1/2] [layers] [reps]
//   (KB_MISALIGN=bytes offsets the weight pointer, to see the cost of unaligned weights)
// Streams `layers` distinct weights (> L3) like a layer stack; prints best ms per layer
// and the weight bytes/s.
#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernel.h"
#include "onnxq/block_int4_format.h"

using namespace onnxq::ops;

static void seq_for(void*, size_t total, void (*task)(void*, size_t), void* ctx) {
  for (size_t i = 0; i < total; ++i) task(ctx, i);
}

int main(int argc, char** argv) {
  if (argc < 7) {
    std::fprintf(stderr, "usage: %s ISA M K N block_size int8 [path] [layers] [reps]\n", argv[0]);
    return 2;
  }
  const std::string isa = argv[1];
  const int64_t M = std::atoll(argv[2]), K = std::atoll(argv[3]), N = std::atoll(argv[4]), bs = std::atoll(argv[5]);
  const bool int8 = std::atoi(argv[6]) != 0;
  const int path = argc > 7 ? std::atoi(argv[7]) : 0;
  const int layers = argc > 8 ? std::atoi(argv[8]) : 8;
  const int reps = argc > 9 ? std::atoi(argv[9]) : 10;
  const IsaKernels* k = isa == "scalar" ? kernels_scalar()
                        : isa == "avx2" ? kernels_avx2()
                        : isa == "avx512" ? kernels_avx512() : kernels_vnni();
  namespace fmt = onnxq::block_int4;
  const int64_t nb = fmt::n_blocks(K, bs), rb = fmt::row_bytes(K, bs);
  std::mt19937 rng(1);
  std::vector<std::vector<uint8_t>> B(layers, std::vector<uint8_t>(N * rb + 64));
  std::vector<std::vector<float>> S(layers, std::vector<float>(N * nb));
  for (int l = 0; l < layers; ++l) {
    for (auto& b : B[l]) b = rng() & 0xFF;
    for (auto& s : S[l]) s = 0.001f * (1 + rng() % 100);
  }
  std::vector<float> A(M * K), Y(M * N);
  for (auto& a : A) a = (rng() % 2001 - 1000) * 0.001f;
  Runner runner{seq_for, nullptr};
  // Interleaved with a plain read of the same weights (64-bit loads, xor-reduced) so the
  // ratio to the memory bandwidth is measured under the same (noisy) conditions.
  auto plain_read = [&]() {
    uint64_t sink = 0;
    for (int l = 0; l < layers; ++l) {
      const uint64_t* p = reinterpret_cast<const uint64_t*>(B[l].data());
      const size_t n = B[l].size() / 8;
      uint64_t x0 = 0, x1 = 0, x2 = 0, x3 = 0, x4 = 0, x5 = 0, x6 = 0, x7 = 0;
      for (size_t i = 0; i + 8 <= n; i += 8) {
        x0 ^= p[i]; x1 ^= p[i + 1]; x2 ^= p[i + 2]; x3 ^= p[i + 3];
        x4 ^= p[i + 4]; x5 ^= p[i + 5]; x6 ^= p[i + 6]; x7 ^= p[i + 7];
      }
      sink ^= x0 ^ x1 ^ x2 ^ x3 ^ x4 ^ x5 ^ x6 ^ x7;
    }
    return sink;
  };
  auto run_kernel = [&]() {
    for (int l = 0; l < layers; ++l) {
      Weights w;
      w.packed = B[l].data() + (std::getenv("KB_MISALIGN") ? std::atoi(std::getenv("KB_MISALIGN")) : 0);
      w.scales = S[l].data();
      w.K = K; w.N = N; w.block_size = bs; w.n_blocks = nb; w.row_bytes = rb; w.zp_bytes = fmt::zero_point_bytes(K, bs);
      Problem p;
      p.A = A.data(); p.M = M; p.lda = K; p.Y = Y.data(); p.ldy = N; p.int8_a = int8; p.force_path = path;
      k->matmul(w, p, runner);
    }
  };
  // thread CPU time: the machine may be shared, time slices of other processes do not count
  struct clk {
    static double now() {
      timespec t;
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
      return t.tv_sec + 1e-9 * t.tv_nsec;
    }
  };
  double best = 1e30, best_read = 1e30;
  std::vector<double> ratios;
  uint64_t sink = 0;
  for (int r = 0; r < reps; ++r) {
    auto t0 = clk::now();
    sink ^= plain_read();
    auto t1 = clk::now();
    run_kernel();
    auto t2 = clk::now();
    const double dr = (t1 - t0) / layers;
    const double dk = (t2 - t1) / layers;
    best = dk < best ? dk : best;
    best_read = dr < best_read ? dr : best_read;
    ratios.push_back(dr / dk);
  }
  std::sort(ratios.begin(), ratios.end());
  std::printf("plain read of B: best %.1f GB/s; kernel/read speed ratio median %.2f (%llu)\n",
              double(N * rb) / best_read / 1e9, ratios[ratios.size() / 2], (unsigned long long)(sink & 1));
  const double bytes = double(N * rb + N * nb * 4);
  std::printf("%s M=%lld K=%lld N=%lld bs=%lld int8=%d: %.3f ms/layer, %.1f GB/s weights, %.1f GMAC/s\n", k->name,
              (long long)M, (long long)K, (long long)N, (long long)bs, int8, best * 1e3, bytes / best / 1e9,
              double(M) * K * N / best / 1e9);
  return 0;
}
