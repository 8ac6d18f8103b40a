// vnni kernels (AVX-512 + VNNI, int8 dot products with vpdpbusd): kernel_simd_impl.h compiled for this ISA.
#define ONNXQ_ISA vnni
#define ONNXQ_ISA_TARGET "avx2,fma,f16c,bmi,bmi2,popcnt,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"
#define ONNXQ_ISA_SIMD "simd_v512.h"
#define ONNXQ_ISA_VECTOR V512
#define ONNXQ_ISA_VNNI true
#include "kernel_simd_impl.h"
