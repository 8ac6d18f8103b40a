// C entry points of the standalone harness library (libonnxq_cuda_harness.so), used through
// ctypes by tests/ops_cuda and bench/bench_cuda_int4.py to check and time the kernels without
// ONNX Runtime. Same launcher as the ORT op.
#include <cstddef>
#include <cstdint>

#include "block_int4_cuda.h"

namespace oc = onnxq::cuda;

#define ONNXQ_HARNESS_API extern "C" __attribute__((visibility("default")))

namespace {
void* g_workspace = nullptr;  // see onnxq_cuda_set_workspace
size_t g_workspace_bytes = 0;
}  // namespace

// dtype: 0 float32, 1 float16. path: 0 auto, 1 skinny, 2 tensor core, 3 simt.
// config: kernel configuration inside the path, -1 for the heuristic. stream: cudaStream_t.
// Returns 0 on success, 1 invalid argument, 2 CUDA error (message in err).
ONNXQ_HARNESS_API int onnxq_cuda_matmul_block_int4(int dtype, const void* a, const void* b, const void* scales,
                                                   const void* zero_points, const void* bias, void* y, int64_t m,
                                                   int64_t k, int64_t n, int64_t block_size, int path, int config,
                                                   int pdl, void* stream, char* err, size_t err_len) {
  oc::MatMulArgs args;
  if (dtype != 0 && dtype != 1) {
    if (err && err_len) err[0] = '\0';
    return oc::kInvalidArgument;
  }
  args.dtype = dtype == 1 ? oc::DType::kFloat16 : oc::DType::kFloat32;
  args.a = a;
  args.b = static_cast<const uint8_t*>(b);
  args.scales = scales;
  args.zero_points = static_cast<const uint8_t*>(zero_points);
  args.bias = bias;
  args.y = y;
  args.m = m;
  args.k = k;
  args.n = n;
  args.block_size = block_size;
  args.path = static_cast<oc::Path>(path);
  args.config = config;
  args.pdl = pdl != 0;
  args.workspace = g_workspace;
  args.workspace_bytes = g_workspace_bytes;
  return oc::LaunchMatMulBlockInt4(args, stream, err, err_len);
}

// Workspace for the stream-K configs, used by every later call (zero-filled device memory of at
// least onnxq_cuda_workspace_bytes() bytes, or null to run without one).
ONNXQ_HARNESS_API void onnxq_cuda_set_workspace(void* ptr, size_t bytes) {
  g_workspace = ptr;
  g_workspace_bytes = ptr ? bytes : 0;
}
ONNXQ_HARNESS_API size_t onnxq_cuda_workspace_bytes() { return oc::WorkspaceBytes(); }

ONNXQ_HARNESS_API int onnxq_cuda_choose_path(int dtype, int64_t m, int64_t k, int64_t n, int64_t block_size) {
  return static_cast<int>(oc::ChoosePath(dtype == 1 ? oc::DType::kFloat16 : oc::DType::kFloat32, m, k, n, block_size));
}

// Format constants, for the byte-for-byte agreement test with onnxq.formats.
ONNXQ_HARNESS_API int onnxq_cuda_format_constants(int* bits, int* zero_code, int* block_sizes, int max_sizes) {
  *bits = oc::kBits;
  *zero_code = oc::kSymmetricZeroCode;
  int i = 0;
  for (int s : oc::kSupportedBlockSizes) {
    if (i < max_sizes) block_sizes[i] = s;
    ++i;
  }
  return i;
}
