// avx2 kernels (AVX2 + FMA, int8 dot products with vpmaddubsw): kernel_simd_impl.h compiled for this ISA.
#define ONNXQ_ISA avx2
#define ONNXQ_ISA_TARGET "avx2,fma,f16c,bmi,bmi2,popcnt"
#define ONNXQ_ISA_SIMD "simd_v256.h"
#define ONNXQ_ISA_VECTOR V256
#define ONNXQ_ISA_VNNI false
#include "kernel_simd_impl.h"
