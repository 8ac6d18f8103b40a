// Host-side interface of the CUDA block-int4 MatMul kernels (com.onnxq MatMulBlockInt4).
//
// Layout (identical to onnxq/formats.py and ORT's com.microsoft.MatMulNBits, 4 bits):
//   B      uint8 [N, n_blocks, block_size / 2]; element k of a block sits in byte k / 2,
//          even k in the low nibble, odd k in the high nibble; ragged tail codes hold the
//          block's zero point.
//   scales T [N, n_blocks]            (T = A's type: float or half)
//   zp     uint8 [N, ceil(n_blocks/2)] (optional; even block in the low nibble; absent = 8)
//   bias   T [N]                      (optional)
//   Y[m, n] = sum_k A[m, k] * (code(k, n) - zp(n, k / bs)) * scale(n, k / bs) (+ bias[n])
//
// This header is plain C++ (no CUDA types) so the ORT op (compiled by the host compiler)
// and the ctypes harness share one launcher.
#pragma once

#include <cstddef>
#include <cstdint>

#include "onnxq/block_int4_format.h"  // the layout, declared once (ops/include)

namespace onnxq {
namespace cuda {

// The format constants the kernels use, taken from the shared format header.
constexpr int kBits = block_int4::kBits;
constexpr int kSymmetricZeroCode = block_int4::kSymmetricZeroPoint;
constexpr int kSupportedBlockSizes[] = {16, 32, 64, 128, 256};
static_assert(block_int4::is_supported_block_size(16) && block_int4::is_supported_block_size(256) &&
                  !block_int4::is_supported_block_size(8) && !block_int4::is_supported_block_size(512) &&
                  !block_int4::is_supported_block_size(48),
              "kSupportedBlockSizes must match block_int4::is_supported_block_size");
static_assert(kBits == 4 && block_int4::kLowNibbleIsEvenElement == 1, "the kernels decode 4-bit, low-nibble-first");

inline bool IsSupportedBlockSize(int64_t bs) { return block_int4::is_supported_block_size(bs); }
inline int64_t NumBlocks(int64_t k, int64_t bs) { return block_int4::n_blocks(k, bs); }
inline int64_t BytesPerBlock(int64_t bs) { return block_int4::bytes_per_block(bs); }
inline int64_t ZeroPointCols(int64_t n_blocks) { return (n_blocks + 1) / 2; }

enum class DType : int { kFloat32 = 0, kFloat16 = 1 };

// Which kernel family runs. kAuto picks by dtype and M; the others force one (tests and
// benchmarks use them so every kernel is checked on every shape).
enum class Path : int {
  kAuto = 0,
  kSkinny = 1,      // fp16, M <= 16: 16-byte loads of B, dequant in registers, mma.sync
  kTensorCore = 2,  // fp16, any M: B dequantized into shared memory, ldmatrix + mma.sync
  kSimt = 3,        // fp32 A: exact fp32 dequant + FFMA on CUDA cores (any M)
  kWgmma = 4,       // fp16, any M, sm_90a: weights dequantized into wgmma register operands
};

struct MatMulArgs {
  DType dtype = DType::kFloat16;
  const void* a = nullptr;             // [M, K]
  const uint8_t* b = nullptr;          // [N, n_blocks, block_size/2]
  const void* scales = nullptr;        // [N, n_blocks]
  const uint8_t* zero_points = nullptr;  // [N, ceil(n_blocks/2)] or null
  const void* bias = nullptr;          // [N] or null
  void* y = nullptr;                   // [M, N]
  int64_t m = 0, k = 0, n = 0;
  int64_t block_size = 0;
  Path path = Path::kAuto;
  int config = -1;    // kernel configuration inside a path (-1: heuristic)
  bool pdl = false;   // programmatic dependent launch on sm_90 (weights prefetched early)
  // Optional device scratch for the stream-K wgmma configs (WorkspaceBytes() bytes). It must be
  // zero-filled before its first use; every launch leaves it zero-filled again. One launch at a
  // time may use a workspace (give each concurrently running stream its own). Without it (null or
  // too small) those configs, also when kAuto picks them, run their plain variant.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Status codes of Launch().
constexpr int kOk = 0;
constexpr int kInvalidArgument = 1;
constexpr int kCudaError = 2;

// Validates `args` (shapes, block size, alignment, index ranges) and launches on `stream`
// (a cudaStream_t). Never reads or writes outside the described tensors (and the workspace). On failure
// returns kInvalidArgument or kCudaError and writes a message into err (if non-null).
int LaunchMatMulBlockInt4(const MatMulArgs& args, void* stream, char* err, size_t err_len);

// Bytes of MatMulArgs::workspace that let every stream-K config run on the current device.
size_t WorkspaceBytes();

// The path kAuto resolves to for these sizes (for reporting).
Path ChoosePath(DType dtype, int64_t m, int64_t k, int64_t n, int64_t block_size);

}  // namespace cuda
}  // namespace onnxq
