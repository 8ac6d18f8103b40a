// Packed block-int4 weight layout: the C++ mirror of onnxq/formats.py (BlockInt4Format).
//
// This is the layout ORT's com.microsoft.MatMulNBits reads (bits = 4), so
// com.onnxq.MatMulBlockInt4 and MatMulNBits share bytes. A weight W [K, N] (Y = A @ W) is
// quantized per column n in blocks of `block_size` consecutive k;
// n_blocks = ceil(K / block_size), the last block may be ragged.
//
//   packed      uint8 [N, n_blocks, block_size / 2]
//               element k of a block sits in byte k / 2: even k in the LOW nibble, odd k in
//               the HIGH nibble. Codes are unsigned 0..15. Ragged-tail positions hold the
//               block's zero point (they dequantize to exactly 0); kernels must not rely on it.
//   scales      float [N, n_blocks] (float32, or float16 for fp16 models)
//   zero_points absent (symmetric: implicit code 8), or
//               uint8 [N, ceil(n_blocks / 2)]: two blocks per byte, even block in the LOW
//               nibble; a trailing odd block leaves the high nibble 0; or
//               float [N, n_blocks] (fractional, HQQ-style).
//
//   W[k, n] = (code(n, k) - zero_point(n, k / block_size)) * scale(n, k / block_size)
//
// Header-only, no dependencies beyond <cstdint>/<cstddef>; shared by the CPU and CUDA ops.
#ifndef ONNXQ_BLOCK_INT4_FORMAT_H_
#define ONNXQ_BLOCK_INT4_FORMAT_H_

#include <cstddef>
#include <cstdint>

namespace onnxq {
namespace block_int4 {

inline constexpr int kBits = 4;
inline constexpr int kCodesPerByte = 8 / kBits;        // 2
inline constexpr int kMaxCode = (1 << kBits) - 1;      // 15
inline constexpr int kSymmetricZeroPoint = 8;          // implicit zero point when absent
inline constexpr int kMinBlockSize = 16;
inline constexpr int kMaxBlockSize = 256;
inline constexpr int kLowNibbleIsEvenElement = 1;      // nibble order: "low-first"

static_assert(kBits * kCodesPerByte == 8, "two 4-bit codes per byte");
static_assert(kMaxCode == 15, "4-bit codes are 0..15");
static_assert(kSymmetricZeroPoint == 1 << (kBits - 1), "symmetric zero point is the mid code");

// Supported block sizes: powers of two in [16, 256] (formats.SUPPORTED_BLOCK_SIZES).
constexpr bool is_supported_block_size(int64_t block_size) {
  return block_size >= kMinBlockSize && block_size <= kMaxBlockSize &&
         (block_size & (block_size - 1)) == 0;
}

constexpr int64_t bytes_per_block(int64_t block_size) { return block_size * kBits / 8; }
constexpr int64_t n_blocks(int64_t k, int64_t block_size) { return (k + block_size - 1) / block_size; }
// Bytes of one column n of `packed` (= n_blocks * bytes_per_block).
constexpr int64_t row_bytes(int64_t k, int64_t block_size) {
  return n_blocks(k, block_size) * bytes_per_block(block_size);
}
// Bytes of one column n of packed uint8 zero points.
constexpr int64_t zero_point_bytes(int64_t k, int64_t block_size) {
  return (n_blocks(k, block_size) + kCodesPerByte - 1) / kCodesPerByte;
}

// One block of the largest supported size, as stored (a layout declaration, like
// llama.cpp's block_q4_0; kernels index raw bytes with the helpers below).
template <int BlockSize>
struct PackedBlock {
  static_assert(is_supported_block_size(BlockSize), "unsupported block size");
  uint8_t codes[BlockSize / kCodesPerByte];
};
static_assert(sizeof(PackedBlock<16>) == 8, "block of 16 packs into 8 bytes");
static_assert(sizeof(PackedBlock<32>) == 16, "block of 32 packs into 16 bytes");
static_assert(sizeof(PackedBlock<64>) == 32, "block of 64 packs into 32 bytes");
static_assert(sizeof(PackedBlock<128>) == 64, "block of 128 packs into 64 bytes");
static_assert(sizeof(PackedBlock<256>) == 128, "block of 256 packs into 128 bytes");
static_assert(bytes_per_block(128) == 64 && n_blocks(4097, 128) == 33 && zero_point_bytes(4097, 128) == 17,
              "size helpers");

// Code of element k (0-based within the whole column) from a column's packed bytes.
inline int code_at(const uint8_t* column, int64_t k) {
  const uint8_t byte = column[k >> 1];
  return (k & 1) ? (byte >> 4) : (byte & 0x0F);
}

// Zero point of block b from a column's packed zero-point bytes (even block: low nibble).
inline int zero_point_at(const uint8_t* zp_column, int64_t b) {
  const uint8_t byte = zp_column[b >> 1];
  return (b & 1) ? (byte >> 4) : (byte & 0x0F);
}

// The reference dequantization of one element (matches PackedBlockInt4.dequantize()).
inline float dequantize(int code, float zero_point, float scale) {
  return (static_cast<float>(code) - zero_point) * scale;
}

}  // namespace block_int4
}  // namespace onnxq

#endif  // ONNXQ_BLOCK_INT4_FORMAT_H_
