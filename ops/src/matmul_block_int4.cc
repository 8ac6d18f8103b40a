#include "matmul_block_int4.h"

#include <cstring>
#include <exception>
#include <sstream>

#include "onnxq/block_int4_format.h"

namespace onnxq {
namespace ops {
namespace {

namespace fmt = ::onnxq::block_int4;

// Largest K or N accepted (2^31 - 1).
constexpr int64_t kMaxDim = (int64_t{1} << 31) - 1;

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? "," : "") << s[i];
  o << "]";
  return o.str();
}

const char* type_name(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    default: return "unsupported type";
  }
}

OrtStatusPtr make_status(OrtErrorCode code, const std::string& msg) {
  return Ort::GetApi().CreateStatus(code, msg.c_str());
}

// Runs tasks on the session's intra-op pool (sequentially when it has one thread).
void ort_parallel_for(void* runner_ctx, size_t total, void (*task)(void*, size_t), void* task_ctx) {
  if (total == 0) return;
  if (total == 1) {
    task(task_ctx, 0);
    return;
  }
  auto* ctx = static_cast<const OrtKernelContext*>(runner_ctx);
  OrtStatus* st = Ort::GetApi().KernelContext_ParallelFor(ctx, task, total, 0, task_ctx);
  if (st != nullptr) {  // no pool available: run here
    Ort::GetApi().ReleaseStatus(st);
    for (size_t i = 0; i < total; ++i) task(task_ctx, i);
  }
}

// Shape and type inference: Y = A.shape[:-1] + [N], same element type as A.
OrtStatusPtr infer_output_shape(const OrtCustomOp*, OrtShapeInferContext* ctx) {
  const OrtApi& api = Ort::GetApi();
  OrtTensorTypeAndShapeInfo* in = nullptr;
  if (OrtStatusPtr st = api.ShapeInferContext_GetInputTypeShape(ctx, 0, &in)) return st;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  size_t rank = 0;
  OrtStatusPtr st = api.GetTensorElementType(in, &type);
  if (!st) st = api.GetDimensionsCount(in, &rank);
  std::vector<int64_t> dims(rank);
  std::vector<const char*> syms(rank, "");
  if (!st && rank) st = api.GetDimensions(in, dims.data(), rank);
  if (!st && rank) st = api.GetSymbolicDimensions(in, syms.data(), rank);
  if (st) return st;
  if (rank == 0) return make_status(ORT_INVALID_GRAPH, "MatMulBlockInt4: input A must have rank >= 1");
  const OrtOpAttr* attr = nullptr;
  int64_t n = -1;
  if (OrtStatusPtr s2 = api.ShapeInferContext_GetAttribute(ctx, "N", &attr)) return s2;
  size_t out_len = 0;
  if (!attr) return make_status(ORT_INVALID_GRAPH, "MatMulBlockInt4: missing required attribute 'N'");
  if (OrtStatusPtr s2 = api.ReadOpAttr(attr, ORT_OP_ATTR_INT, &n, sizeof n, &out_len)) return s2;
  std::vector<std::string> sym_storage(syms.begin(), syms.end());
  dims.back() = n;
  sym_storage.back() = "";
  std::vector<const char*> out_syms;
  for (auto& s : sym_storage) out_syms.push_back(s.c_str());
  OrtTensorTypeAndShapeInfo* out = nullptr;
  if (OrtStatusPtr s2 = api.CreateTensorTypeAndShapeInfo(&out)) return s2;
  st = api.SetTensorElementType(out, type);
  if (!st) st = api.SetDimensions(out, dims.data(), dims.size());
  if (!st) st = api.SetSymbolicDimensions(out, out_syms.data(), out_syms.size());
  if (!st) st = api.ShapeInferContext_SetOutputTypeShape(ctx, 0, out);
  api.ReleaseTensorTypeAndShapeInfo(out);
  return st;
}

// Reads an int attribute; returns false when absent.
bool read_int_attr(const OrtKernelInfo* info, const char* name, int64_t* out) {
  OrtStatus* st = Ort::GetApi().KernelInfoGetAttribute_int64(info, name, out);
  if (st) {
    Ort::GetApi().ReleaseStatus(st);
    return false;
  }
  return true;
}

// Tensor data of a constant initializer input, or null.
const OrtValue* constant_input(const OrtKernelInfo* info, size_t index) {
  int is_const = 0;
  const OrtValue* v = nullptr;
  OrtStatus* st = Ort::GetApi().KernelInfoGetConstantInput_tensor(info, index, &is_const, &v);
  if (st) {
    Ort::GetApi().ReleaseStatus(st);
    return nullptr;
  }
  return is_const ? v : nullptr;
}

}  // namespace

// ---- op ------------------------------------------------------------------------------

MatMulBlockInt4Op::MatMulBlockInt4Op(ONNXTensorElementDataType float_type, ONNXTensorElementDataType zp_type)
    : float_type_(float_type), zp_type_(zp_type) {
  // Build against C API 21 whatever the headers' version (they are >= 21).
  OrtCustomOp::version = ONNXQ_ORT_API_VERSION;
  OrtCustomOp::InferOutputShapeFn = infer_output_shape;
}

ONNXTensorElementDataType MatMulBlockInt4Op::GetInputType(size_t index) const {
  switch (index) {
    case 1: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    case 3: return zp_type_;
    default: return float_type_;  // A, scales, bias
  }
}

OrtStatusPtr MatMulBlockInt4Op::CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** op_kernel) const {
  try {
    auto kernel = std::make_unique<MatMulBlockInt4Kernel>(float_type_, zp_type_);
    std::string err = kernel->Init(info);
    if (!err.empty()) return make_status(ORT_INVALID_ARGUMENT, "MatMulBlockInt4: " + err);
    *op_kernel = kernel.release();
    return nullptr;
  } catch (const std::exception& e) {
    return make_status(ORT_FAIL, std::string("MatMulBlockInt4: ") + e.what());
  }
}

// ---- kernel --------------------------------------------------------------------------

std::string MatMulBlockInt4Kernel::Init(const OrtKernelInfo* info) {
  int64_t bits = 0;
  const char* required[] = {"K", "N", "bits", "block_size"};
  int64_t* dst[] = {&K_, &N_, &bits, &block_size_};
  for (int i = 0; i < 4; ++i)
    if (!read_int_attr(info, required[i], dst[i])) return std::string("missing required int attribute '") + required[i] + "'";
  if (!read_int_attr(info, "accuracy_level", &accuracy_level_)) accuracy_level_ = 0;
  if (bits != fmt::kBits) return "attribute bits=" + std::to_string(bits) + " is not supported; only bits=4";
  if (!fmt::is_supported_block_size(block_size_))
    return "attribute block_size=" + std::to_string(block_size_) + " is not supported; use 16, 32, 64, 128 or 256";
  if (K_ < 1 || N_ < 1) return "attributes K and N must be >= 1, got K=" + std::to_string(K_) + ", N=" + std::to_string(N_);
  // Bounded so that every size product below (N * n_blocks, N * row_bytes, ...) fits int64.
  if (K_ > kMaxDim || N_ > kMaxDim)
    return "attributes K and N must be <= " + std::to_string(kMaxDim) + ", got K=" + std::to_string(K_) + ", N=" + std::to_string(N_);
  if (accuracy_level_ < 0 || accuracy_level_ > 4)
    return "attribute accuracy_level=" + std::to_string(accuracy_level_) + " must be 0..4 (4: int8 activations)";
  n_blocks_ = fmt::n_blocks(K_, block_size_);
  std::string err = choose_kernels(&choice_);
  if (!err.empty()) return err;

  // Constant float16 scales / float zero points: convert to float32 once.
  if (float_type_ == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
    const size_t expect = static_cast<size_t>(N_ * n_blocks_);
    for (size_t idx : {size_t{2}, size_t{3}}) {
      if (idx == 3 && zp_type_ != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) continue;
      const OrtValue* v = constant_input(info, idx);
      if (!v) continue;
      Ort::ConstValue cv(v);
      auto ti = cv.GetTensorTypeAndShapeInfo();
      if (ti.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 || ti.GetElementCount() != expect)
        continue;  // Compute reports the shape error
      std::vector<float>& out = idx == 2 ? const_scales_ : const_zp_;
      out.resize(expect);
      choice_.kernels->half_to_float(reinterpret_cast<const uint16_t*>(cv.GetTensorRawData()), out.data(), expect);
    }
  }
  return "";
}

OrtStatusPtr MatMulBlockInt4Kernel::ComputeV2(OrtKernelContext* context) {
  try {
    std::string err = Compute(context);
    if (err.empty()) return nullptr;
    return make_status(ORT_INVALID_ARGUMENT, "MatMulBlockInt4: " + err);
  } catch (const Ort::Exception& e) {
    return make_status(e.GetOrtErrorCode(), std::string("MatMulBlockInt4: ") + e.what());
  } catch (const std::bad_alloc&) {
    return make_status(ORT_FAIL, "MatMulBlockInt4: out of memory");
  } catch (const std::exception& e) {
    return make_status(ORT_FAIL, std::string("MatMulBlockInt4: ") + e.what());
  }
}

std::string MatMulBlockInt4Kernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  const size_t n_inputs = ctx.GetInputCount();
  auto input = [&](size_t i) -> Ort::ConstValue {
    if (i >= n_inputs) return Ort::ConstValue(nullptr);
    return ctx.GetInput(i);
  };
  const bool half = float_type_ == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  const int64_t K = K_, N = N_, bs = block_size_, nb = n_blocks_;
  const int64_t row_bytes = fmt::row_bytes(K, bs), zp_bytes = fmt::zero_point_bytes(K, bs);
  std::ostringstream ctxmsg;
  ctxmsg << " (K=" << K << ", N=" << N << ", block_size=" << bs << ", n_blocks=" << nb << ")";

  // A
  Ort::ConstValue a = input(0);
  if (!a) return "input A is missing";
  auto a_info = a.GetTensorTypeAndShapeInfo();
  const std::vector<int64_t> a_shape = a_info.GetShape();
  if (a_info.GetElementType() != float_type_)
    return std::string("input A has type ") + type_name(a_info.GetElementType()) + ", expected " + type_name(float_type_);
  if (a_shape.empty() || a_shape.back() != K)
    return "input A has shape " + shape_str(a_shape) + "; its last dimension must equal K" + ctxmsg.str();
  int64_t M = 1;
  for (size_t i = 0; i + 1 < a_shape.size(); ++i) M *= a_shape[i];

  // B
  Ort::ConstValue b = input(1);
  if (!b) return "input B is missing";
  auto b_info = b.GetTensorTypeAndShapeInfo();
  const std::vector<int64_t> b_shape = b_info.GetShape();
  const std::vector<int64_t> b_expect = {N, nb, fmt::bytes_per_block(bs)};
  if (b_info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8)
    return std::string("input B has type ") + type_name(b_info.GetElementType()) + ", expected uint8";
  if (b_shape != b_expect)
    return "input B has shape " + shape_str(b_shape) + ", expected " + shape_str(b_expect) + ctxmsg.str();

  // scales: [N, n_blocks] (or flat [N * n_blocks], as MatMulNBits accepts)
  Ort::ConstValue s = input(2);
  if (!s) return "input scales is missing";
  auto s_info = s.GetTensorTypeAndShapeInfo();
  const std::vector<int64_t> s_shape = s_info.GetShape();
  if (s_info.GetElementType() != float_type_)
    return std::string("input scales has type ") + type_name(s_info.GetElementType()) + ", expected " + type_name(float_type_) + " (the type of A)";
  if (s_shape != std::vector<int64_t>{N, nb} && s_shape != std::vector<int64_t>{N * nb})
    return "input scales has shape " + shape_str(s_shape) + ", expected " + shape_str({N, nb}) + ctxmsg.str();

  // zero points
  Ort::ConstValue z = input(3);
  const uint8_t* zp_packed = nullptr;
  const void* zp_raw_float = nullptr;
  if (z) {
    auto z_info = z.GetTensorTypeAndShapeInfo();
    const std::vector<int64_t> z_shape = z_info.GetShape();
    if (z_info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8) {
      if (z_shape != std::vector<int64_t>{N, zp_bytes} && z_shape != std::vector<int64_t>{N * zp_bytes})
        return "input zero_points (uint8, two 4-bit zero points per byte) has shape " + shape_str(z_shape) +
               ", expected " + shape_str({N, zp_bytes}) + ctxmsg.str();
      zp_packed = static_cast<const uint8_t*>(z.GetTensorRawData());
    } else if (z_info.GetElementType() == float_type_) {
      if (z_shape != std::vector<int64_t>{N, nb} && z_shape != std::vector<int64_t>{N * nb})
        return "input zero_points (float) has shape " + shape_str(z_shape) + ", expected " + shape_str({N, nb}) + ctxmsg.str();
      zp_raw_float = z.GetTensorRawData();
    } else {
      return std::string("input zero_points has type ") + type_name(z_info.GetElementType()) + ", expected uint8 or " + type_name(float_type_);
    }
  }

  // bias
  Ort::ConstValue bias = input(4);
  if (bias) {
    auto bi = bias.GetTensorTypeAndShapeInfo();
    if (bi.GetElementType() != float_type_)
      return std::string("input bias has type ") + type_name(bi.GetElementType()) + ", expected " + type_name(float_type_);
    if (bi.GetShape() != std::vector<int64_t>{N})
      return "input bias has shape " + shape_str(bi.GetShape()) + ", expected " + shape_str({N});
  }

  std::vector<int64_t> y_shape(a_shape.begin(), a_shape.end() - 1);
  y_shape.push_back(N);
  Ort::UnownedValue y = ctx.GetOutput(0, y_shape);
  if (M == 0) return "";

  const IsaKernels& kern = *choice_.kernels;
  // float32 views of everything
  std::vector<float> a32, s32, z32, y32, bias32;
  const float* a_ptr;
  const float* s_ptr;
  const float* zf_ptr = nullptr;
  float* y_ptr;
  if (half) {
    a32.resize(static_cast<size_t>(M * K));
    kern.half_to_float(static_cast<const uint16_t*>(a.GetTensorRawData()), a32.data(), a32.size());
    a_ptr = a32.data();
    if (!const_scales_.empty()) {
      s_ptr = const_scales_.data();
    } else {
      s32.resize(static_cast<size_t>(N * nb));
      kern.half_to_float(static_cast<const uint16_t*>(s.GetTensorRawData()), s32.data(), s32.size());
      s_ptr = s32.data();
    }
    if (zp_raw_float) {
      if (!const_zp_.empty()) {
        zf_ptr = const_zp_.data();
      } else {
        z32.resize(static_cast<size_t>(N * nb));
        kern.half_to_float(static_cast<const uint16_t*>(zp_raw_float), z32.data(), z32.size());
        zf_ptr = z32.data();
      }
    }
    y32.resize(static_cast<size_t>(M * N));
    y_ptr = y32.data();
  } else {
    a_ptr = static_cast<const float*>(a.GetTensorRawData());
    s_ptr = static_cast<const float*>(s.GetTensorRawData());
    zf_ptr = static_cast<const float*>(zp_raw_float);
    y_ptr = y.GetTensorMutableData<float>();
  }

  Weights w;
  w.packed = static_cast<const uint8_t*>(b.GetTensorRawData());
  w.scales = s_ptr;
  w.zp_packed = zp_packed;
  w.zp_float = zf_ptr;
  w.K = K;
  w.N = N;
  w.block_size = bs;
  w.n_blocks = nb;
  w.row_bytes = row_bytes;
  w.zp_bytes = zp_bytes;

  Problem p;
  p.A = a_ptr;
  p.M = M;
  p.lda = K;
  p.Y = y_ptr;
  p.ldy = N;
  p.int8_a = accuracy_level_ == 4;
  p.force_path = choice_.force_path;

  Runner runner{ort_parallel_for, context};
  if (kern.matmul(w, p, runner) != kOk) throw std::bad_alloc();

  if (bias) {
    const float* bptr;
    if (half) {
      bias32.resize(static_cast<size_t>(N));
      kern.half_to_float(static_cast<const uint16_t*>(bias.GetTensorRawData()), bias32.data(), bias32.size());
      bptr = bias32.data();
    } else {
      bptr = static_cast<const float*>(bias.GetTensorRawData());
    }
    for (int64_t m = 0; m < M; ++m) {
      float* row = y_ptr + m * N;
      for (int64_t n = 0; n < N; ++n) row[n] += bptr[n];
    }
  }
  if (half) kern.float_to_half(y32.data(), static_cast<uint16_t*>(y.GetTensorMutableRawData()), y32.size());
  return "";
}

}  // namespace ops
}  // namespace onnxq
