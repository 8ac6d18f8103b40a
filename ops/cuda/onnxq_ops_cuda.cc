// ONNX Runtime registration of com.onnxq MatMulBlockInt4 on the CUDA execution provider.
//
//   Y = MatMulBlockInt4(A, B, scales, zero_points?, bias?)   attrs K, N, bits = 4, block_size
//
// A: float or float16 [..., K]; B: uint8 [N, n_blocks, block_size/2]; scales: A's type,
// [N, n_blocks] (or flattened [N * n_blocks]); zero_points: uint8 [N, ceil(n_blocks/2)]
// (or flattened); bias: A's type [N]; Y: A's type [..., N]. The bytes are those of
// onnxq.formats.PackedBlockInt4 (and of com.microsoft.MatMulNBits with bits=4).
//
// Two kernels share the name (float and float16 A); ORT builds one schema with both types.
// Launches go on the stream ORT hands the kernel (KernelContext::GetGPUComputeStream).
// Every shape/attribute problem is returned as an ORT error status.

#ifndef ORT_API_MANUAL_INIT
#define ORT_API_MANUAL_INIT  // the API table comes from RegisterCustomOps, not from linking ORT
#endif
#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "block_int4_cuda.h"
#if defined(ONNXQ_WITH_CPU_OPS)
#include "matmul_block_int4.h"  // the CPU kernel (ops/src), registered in the same domain
#endif

namespace {

namespace oc = onnxq::cuda;

constexpr const char* kDomain = "com.onnxq";
constexpr const char* kOpName = "MatMulBlockInt4";

std::string ShapeStr(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

OrtStatusPtr MakeStatus(OrtErrorCode code, const std::string& msg) {
  return Ort::GetApi().CreateStatus(code, (std::string(kOpName) + ": " + msg).c_str());
}

struct Attrs {
  int64_t k = 0, n = 0, bits = 4, block_size = 0;
};

struct MatMulBlockInt4Kernel {
  Attrs attrs;
  ONNXTensorElementDataType type;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      return Compute(context);
    } catch (const Ort::Exception& e) {
      return MakeStatus(e.GetOrtErrorCode(), e.what());
    } catch (const std::exception& e) {
      return MakeStatus(ORT_FAIL, e.what());
    }
  }

  OrtStatusPtr Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    const size_t n_in = ctx.GetInputCount();
    if (n_in < 3) return MakeStatus(ORT_INVALID_ARGUMENT, "needs inputs A, B and scales");
    auto input = [&](size_t i) -> Ort::ConstValue {
      return i < n_in ? ctx.GetInput(i) : Ort::ConstValue{nullptr};
    };
    Ort::ConstValue a = input(0), b = input(1), scales = input(2), zp = input(3), bias = input(4);
    if (a == nullptr || b == nullptr || scales == nullptr)
      return MakeStatus(ORT_INVALID_ARGUMENT, "A, B and scales are required");

    const int64_t K = attrs.k, N = attrs.n, bs = attrs.block_size;
    const int64_t nb = oc::NumBlocks(K, bs);

    auto a_info = a.GetTensorTypeAndShapeInfo();
    const std::vector<int64_t> a_shape = a_info.GetShape();
    if (a_info.GetElementType() != type) return MakeStatus(ORT_INVALID_ARGUMENT, "A has an unexpected element type");
    if (a_shape.empty() || a_shape.back() != K)
      return MakeStatus(ORT_INVALID_ARGUMENT, "A has shape " + ShapeStr(a_shape) + ", its last dimension must equal K=" +
                                                  std::to_string(K));
    int64_t M = 1;
    for (size_t i = 0; i + 1 < a_shape.size(); ++i) {
      if (a_shape[i] < 0) return MakeStatus(ORT_INVALID_ARGUMENT, "A has a negative dimension");
      M *= a_shape[i];
    }

    auto b_info = b.GetTensorTypeAndShapeInfo();
    const std::vector<int64_t> b_shape = b_info.GetShape();
    const std::vector<int64_t> b_want = {N, nb, oc::BytesPerBlock(bs)};
    if (b_info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 || b_shape != b_want)
      return MakeStatus(ORT_INVALID_ARGUMENT, "B must be uint8 " + ShapeStr(b_want) + ", got " + ShapeStr(b_shape));

    auto s_info = scales.GetTensorTypeAndShapeInfo();
    const std::vector<int64_t> s_shape = s_info.GetShape();
    if (s_info.GetElementType() != type || !(s_shape == std::vector<int64_t>{N, nb} || s_shape == std::vector<int64_t>{N * nb}))
      return MakeStatus(ORT_INVALID_ARGUMENT, "scales must have A's type and shape " + ShapeStr({N, nb}) + ", got " +
                                                  ShapeStr(s_shape));

    const uint8_t* zp_data = nullptr;
    if (zp != nullptr) {
      auto z_info = zp.GetTensorTypeAndShapeInfo();
      const std::vector<int64_t> z_shape = z_info.GetShape();
      const int64_t zc = oc::ZeroPointCols(nb);
      if (z_info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 ||
          !(z_shape == std::vector<int64_t>{N, zc} || z_shape == std::vector<int64_t>{N * zc}))
        return MakeStatus(ORT_INVALID_ARGUMENT, "zero_points must be uint8 " + ShapeStr({N, zc}) + " (packed nibbles), got " +
                                                    ShapeStr(z_shape));
      zp_data = static_cast<const uint8_t*>(zp.GetTensorRawData());
    }
    const void* bias_data = nullptr;
    if (bias != nullptr) {
      auto bi = bias.GetTensorTypeAndShapeInfo();
      if (bi.GetElementType() != type || bi.GetShape() != std::vector<int64_t>{N})
        return MakeStatus(ORT_INVALID_ARGUMENT, "bias must have A's type and shape [" + std::to_string(N) + "], got " +
                                                    ShapeStr(bi.GetShape()));
      bias_data = bias.GetTensorRawData();
    }

    std::vector<int64_t> y_shape(a_shape.begin(), a_shape.end() - 1);
    y_shape.push_back(N);
    Ort::UnownedValue y = ctx.GetOutput(0, y_shape);
    if (M == 0) return nullptr;

    oc::MatMulArgs args;
    args.dtype = type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ? oc::DType::kFloat16 : oc::DType::kFloat32;
    args.a = a.GetTensorRawData();
    args.b = static_cast<const uint8_t*>(b.GetTensorRawData());
    args.scales = scales.GetTensorRawData();
    args.zero_points = zp_data;
    args.bias = bias_data;
    args.y = y.GetTensorMutableRawData();
    args.m = M;
    args.k = K;
    args.n = N;
    args.block_size = bs;
    char err[512];
    const int rc = oc::LaunchMatMulBlockInt4(args, ctx.GetGPUComputeStream(), err, sizeof(err));
    if (rc == oc::kInvalidArgument) return MakeStatus(ORT_INVALID_ARGUMENT, err);
    if (rc != oc::kOk) return MakeStatus(ORT_EP_FAIL, err);
    return nullptr;
  }
};

template <ONNXTensorElementDataType kType>
struct MatMulBlockInt4Op : Ort::CustomOpBase<MatMulBlockInt4Op<kType>, MatMulBlockInt4Kernel, /*WithStatus=*/true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** op_kernel) const {
    try {
      Ort::ConstKernelInfo ki(info);
      Attrs at;
      at.k = ki.GetAttribute<int64_t>("K");
      at.n = ki.GetAttribute<int64_t>("N");
      at.block_size = ki.GetAttribute<int64_t>("block_size");
      try {
        at.bits = ki.GetAttribute<int64_t>("bits");
      } catch (const Ort::Exception&) {
        at.bits = 4;  // optional, defaults to 4
      }
      if (at.bits != oc::kBits) return MakeStatus(ORT_INVALID_ARGUMENT, "bits must be 4, got " + std::to_string(at.bits));
      if (!oc::IsSupportedBlockSize(at.block_size))
        return MakeStatus(ORT_INVALID_ARGUMENT,
                          "block_size must be one of 16, 32, 64, 128, 256, got " + std::to_string(at.block_size));
      if (at.k < 1 || at.n < 1 || at.k >= (int64_t(1) << 31) || at.n >= (int64_t(1) << 31))
        return MakeStatus(ORT_INVALID_ARGUMENT, "K and N must be in [1, 2^31), got K=" + std::to_string(at.k) +
                                                    " N=" + std::to_string(at.n));
      *op_kernel = new MatMulBlockInt4Kernel{at, kType};
      return nullptr;
    } catch (const Ort::Exception& e) {
      return MakeStatus(e.GetOrtErrorCode(), e.what());
    } catch (const std::exception& e) {
      return MakeStatus(ORT_FAIL, e.what());
    }
  }

  const char* GetName() const { return kOpName; }
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }

  size_t GetInputTypeCount() const { return 5; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    return (i == 1 || i == 3) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : kType;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i >= 3 ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                  : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*i*/) const { return kType; }
};

std::mutex g_domains_mutex;
std::vector<Ort::CustomOpDomain>& Domains() {
  static std::vector<Ort::CustomOpDomain> domains;  // must outlive every session using them
  return domains;
}

}  // namespace

#if defined(_WIN32)
#define ONNXQ_EXPORT __declspec(dllexport)
#else
#define ONNXQ_EXPORT __attribute__((visibility("default")))
#endif

extern "C" ONNXQ_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  // An ORT older than these headers returns null here (and logs why); nothing can be
  // registered and no status can be built, so the model then fails on the unknown op.
  if (api == nullptr) return nullptr;
  Ort::InitApi(api);
  static const MatMulBlockInt4Op<ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT> op_f32;
  static const MatMulBlockInt4Op<ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16> op_f16;
#if defined(ONNXQ_WITH_CPU_OPS)
  // CPU kernels (A/scales type, zero-point type), as libonnxq_ops.so registers them
  static const onnxq::ops::MatMulBlockInt4Op cpu_ops[] = {
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8},
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT},
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8},
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16},
  };
#endif
  try {
    Ort::CustomOpDomain domain{kDomain};
    domain.Add(&op_f32);
    domain.Add(&op_f16);
#if defined(ONNXQ_WITH_CPU_OPS)
    for (const auto& op : cpu_ops) domain.Add(&op);
#endif
    Ort::UnownedSessionOptions session_options(options);
    session_options.Add(domain);
    std::lock_guard<std::mutex> lock(g_domains_mutex);
    Domains().push_back(std::move(domain));
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
