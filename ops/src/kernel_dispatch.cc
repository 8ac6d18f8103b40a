// Run-time ISA selection: the best kernel set this CPU supports, capped by ONNXQ_ISA.
//   ONNXQ_ISA=auto|scalar|avx2|avx512|vnni   (read when a session creates the kernel)
//   ONNXQ_KERNEL_PATH=auto|gemv|gemm         (test hook: force the small-M or panel kernel)
#include <cstdlib>
#include <string>

#include "matmul_block_int4.h"

namespace onnxq {
namespace ops {
namespace {

struct CpuCaps {
  bool avx2 = false, avx512 = false, vnni = false;
};

CpuCaps detect() {
  CpuCaps c;
#if defined(ONNXQ_X86) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  c.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  c.avx512 = c.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  c.vnni = c.avx512 && __builtin_cpu_supports("avx512vnni");
#endif
  return c;
}

const CpuCaps& caps() {
  static const CpuCaps c = detect();
  return c;
}

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

}  // namespace

std::string cpu_isa_summary() {
  const CpuCaps& c = caps();
  if (c.vnni) return "vnni (avx512 + avx512vnni)";
  if (c.avx512) return "avx512";
  if (c.avx2) return "avx2";
  return "scalar";
}

std::string choose_kernels(KernelChoice* out) {
  const CpuCaps& c = caps();
  const std::string isa = env("ONNXQ_ISA");
  const IsaKernels* k = kernels_scalar();
#if defined(ONNXQ_X86)
  if (isa.empty() || isa == "auto") {
    if (c.vnni)
      k = kernels_vnni();
    else if (c.avx512)
      k = kernels_avx512();
    else if (c.avx2)
      k = kernels_avx2();
  } else if (isa == "scalar") {
  } else if (isa == "avx2" || isa == "avx512" || isa == "vnni") {
    const bool ok = isa == "avx2" ? c.avx2 : (isa == "avx512" ? c.avx512 : c.vnni);
    if (!ok) return "ONNXQ_ISA=" + isa + " but this CPU supports at most " + cpu_isa_summary();
    k = isa == "avx2" ? kernels_avx2() : (isa == "avx512" ? kernels_avx512() : kernels_vnni());
  } else {
    return "ONNXQ_ISA=" + isa + " is not one of auto, scalar, avx2, avx512, vnni";
  }
#elif defined(ONNXQ_NEON)  // aarch64: NEON is baseline there (kernel_neon.cc)
  (void)c;
  if (isa.empty() || isa == "auto" || isa == "neon")
    k = kernels_neon();
  else if (isa != "scalar")
    return "ONNXQ_ISA=" + isa + " is not one of auto, scalar, neon";
#else
  (void)c;
  if (!(isa.empty() || isa == "auto" || isa == "scalar"))
    return "ONNXQ_ISA=" + isa + ": this build has only the scalar kernels";
#endif
  const std::string path = env("ONNXQ_KERNEL_PATH");
  int force = 0;
  if (path == "gemv")
    force = 1;
  else if (path == "gemm")
    force = 2;
  else if (!(path.empty() || path == "auto"))
    return "ONNXQ_KERNEL_PATH=" + path + " is not one of auto, gemv, gemm";
  out->kernels = k;
  out->force_path = force;
  return "";
}

}  // namespace ops
}  // namespace onnxq
