// com.onnxq.MatMulBlockInt4 (CPU): Y = A @ dequant(B) (+ bias).
#ifndef ONNXQ_OPS_MATMUL_BLOCK_INT4_H_
#define ONNXQ_OPS_MATMUL_BLOCK_INT4_H_

#include <memory>
#include <string>
#include <vector>

#include "onnxruntime_cxx_api.h"
#include "kernel.h"

namespace onnxq {
namespace ops {

inline constexpr const char* kDomain = "com.onnxq";
inline constexpr const char* kOpName = "MatMulBlockInt4";

// The kernel chosen for this process/session: ISA from CPUID, capped by ONNXQ_ISA.
struct KernelChoice {
  const IsaKernels* kernels = nullptr;
  int force_path = 0;  // ONNXQ_KERNEL_PATH: auto (0) | gemv (1) | gemm (2); a test hook
};
// Returns an empty string on success, else an error message.
std::string choose_kernels(KernelChoice* out);
// "avx512 (vnni)" etc.: what this CPU supports, for messages.
std::string cpu_isa_summary();

class MatMulBlockInt4Kernel {
 public:
  MatMulBlockInt4Kernel(ONNXTensorElementDataType float_type, ONNXTensorElementDataType zp_type)
      : float_type_(float_type), zp_type_(zp_type) {}
  // Reads and validates attributes and constant inputs; returns an error message or "".
  std::string Init(const OrtKernelInfo* info);
  OrtStatusPtr ComputeV2(OrtKernelContext* context);

 private:
  std::string Compute(OrtKernelContext* context);

  ONNXTensorElementDataType float_type_;
  ONNXTensorElementDataType zp_type_;
  int64_t K_ = 0, N_ = 0, block_size_ = 0, n_blocks_ = 0, accuracy_level_ = 0;
  KernelChoice choice_;
  // float32 copies of float16 constant scales / float zero points (empty when not constant).
  std::vector<float> const_scales_;
  std::vector<float> const_zp_;
};

// One registration per (A/scales/bias float type, zero-point type).
struct MatMulBlockInt4Op : Ort::CustomOpBase<MatMulBlockInt4Op, MatMulBlockInt4Kernel, true> {
  MatMulBlockInt4Op(ONNXTensorElementDataType float_type, ONNXTensorElementDataType zp_type);

  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** op_kernel) const;
  const char* GetName() const { return kOpName; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }

  size_t GetInputTypeCount() const { return 5; }
  ONNXTensorElementDataType GetInputType(size_t index) const;
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index >= 3 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return float_type_; }

  ONNXTensorElementDataType float_type_;
  ONNXTensorElementDataType zp_type_;
};

}  // namespace ops
}  // namespace onnxq

#endif  // ONNXQ_OPS_MATMUL_BLOCK_INT4_H_
