// Entry point of libonnxq_ops.so: the only exported symbol.
#include <mutex>
#include <string>
#include <vector>

#include "matmul_block_int4.h"

namespace {

using onnxq::ops::MatMulBlockInt4Op;

// Domains must outlive every session that uses them; one per registration call.
std::vector<Ort::CustomOpDomain>& domains() {
  static std::vector<Ort::CustomOpDomain> d;
  return d;
}
std::mutex& domains_mutex() {
  static std::mutex m;
  return m;
}

const std::vector<MatMulBlockInt4Op>& ops() {
  static const std::vector<MatMulBlockInt4Op> o = {
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8},
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT},
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8},
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16},
  };
  return o;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ONNXQ_ORT_API_VERSION);
  if (api == nullptr) {
    // Older runtime: report with the oldest API every runtime has.
    const OrtApi* api1 = api_base->GetApi(1);
    std::string msg = "onnxq custom ops need onnxruntime >= 1.21 (C API version 21); this runtime is ";
    msg += api_base->GetVersionString();
    return api1 ? api1->CreateStatus(ORT_FAIL, msg.c_str()) : nullptr;
  }
  Ort::InitApi(api);
  {
    onnxq::ops::KernelChoice choice;
    std::string err = onnxq::ops::choose_kernels(&choice);
    if (!err.empty()) return api->CreateStatus(ORT_INVALID_ARGUMENT, ("onnxq custom ops: " + err).c_str());
  }
  try {
    Ort::CustomOpDomain domain{onnxq::ops::kDomain};
    for (const auto& op : ops()) domain.Add(&op);
    Ort::UnownedSessionOptions(options).Add(domain);
    std::lock_guard<std::mutex> lock(domains_mutex());
    domains().push_back(std::move(domain));
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
