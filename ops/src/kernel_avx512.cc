// avx512 kernels (AVX-512 F/BW/VL/DQ, int8 dot products with vpmaddubsw): kernel_simd_impl.h compiled for this ISA.
#define ONNXQ_ISA avx512
#define ONNXQ_ISA_TARGET "avx2,fma,f16c,bmi,bmi2,popcnt,avx512f,avx512bw,avx512vl,avx512dq"
#define ONNXQ_ISA_SIMD "simd_v512.h"
#define ONNXQ_ISA_VECTOR V512
#define ONNXQ_ISA_VNNI false
#include "kernel_simd_impl.h"
