// Shared by the CUDA sources of the op families (gather_cuda.cu, decoder_cuda.cu, masks_cuda.cu, loss_cuda.cu):
// the element-type conversions of the kernels and the host launchers' helpers. Free of torch headers, as the
// sources. Conventions as the references in vmae2_kernels/<family>/reference.py: ids int64 [B, K] unique per row,
// any order; fp32 arithmetic with one rounding to the output type; T in {float, __half, __nv_bfloat16}.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "vmae2_cuda.h"

namespace vmae2 {

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename T> struct Tag { using type = T; };

// Calls fn(Tag<T>{}) with the CUDA type of `dtype`; every launcher instantiates its kernels for all three types.
template <typename Fn>
void by_dtype(DType dtype, Fn fn) {
  switch (dtype) {
    case DType::kFloat32: fn(Tag<float>{}); break;
    case DType::kFloat16: fn(Tag<__half>{}); break;
    case DType::kBFloat16: fn(Tag<__nv_bfloat16>{}); break;
  }
}

// Threads for a block striding over `work` elements: a multiple of 32 (the reductions use full-warp shuffles).
inline int threads_for(int64_t work, int most = 256) {
  return static_cast<int>(std::min<int64_t>(most, std::max<int64_t>(32, (work + 31) / 32 * 32)));
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Lets `kernel` take `bytes` of dynamic shared memory: above the default 48 KB a kernel must opt in; past the
// device's opt-in limit cudaFuncSetAttribute returns cudaErrorInvalidValue.
template <typename Kernel>
cudaError_t allow_smem(Kernel* kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

}  // namespace vmae2
