// CUDA kernels of the gathers (token_gather, token_scatter, tubelet_gather) and their host launchers
// (vmae2_cuda.h); CPU twin: ../gather_cpu.cpp. Reference: vmae2_kernels/gather/reference.py. The torch binding
// (vmae2_cuda_binding.cpp) calls the launchers on the current stream.
#include "vmae2_cuda_common.cuh"

namespace vmae2 {

// One block per (sample, row): out[b, k] = x[b, ids[b, k]] (+ pos[ids] rounded to T). Without pos, rows are copied
// with 16-byte vectors when the launcher found C * sizeof(T) a multiple of 16 and both pointers 16-byte aligned
// (every ViT width), else element by element.
template <typename T, bool HAS_POS>
__global__ void token_gather_kernel(const T* __restrict__ x, const int64_t* __restrict__ ids,
                                    const T* __restrict__ pos, T* __restrict__ out, int64_t N, int64_t K, int64_t C,
                                    bool vec16) {
  const int64_t r = blockIdx.x;  // b * K + k
  const int64_t b = r / K, token = ids[r];
  const T* src = x + (b * N + token) * C;
  T* dst = out + r * C;
  if (!HAS_POS && vec16) {
    const int64_t n16 = C * sizeof(T) / 16;
    const int4* s4 = reinterpret_cast<const int4*>(src);
    int4* d4 = reinterpret_cast<int4*>(dst);
    for (int64_t i = threadIdx.x; i < n16; i += blockDim.x) d4[i] = s4[i];
    return;
  }
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    dst[c] = HAS_POS ? from_f<T>(to_f(src[c]) + to_f(pos[token * C + c])) : src[c];
  }
}

// Adjoint: out[b, ids[b, k]] = src[b, k] on a zeroed output (ids unique per row: plain stores, deterministic).
template <typename T>
__global__ void token_scatter_kernel(const T* __restrict__ src, const int64_t* __restrict__ ids,
                                     T* __restrict__ out, int64_t N, int64_t K, int64_t C) {
  const int64_t r = blockIdx.x;
  const int64_t b = r / K, token = ids[r];
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out[(b * N + token) * C + c] = src[r * C + c];
}

// One block per token: out[r] = the pixels of tubelet ids[r] in (c, p0, p1, p2) order, 3 * tub * patch runs of
// `patch` pixels contiguous in the video. With vec16 (the launcher found the runs and the output rows 16-byte
// aligned: patch * sizeof(T) and the strides multiples of 16 bytes, both pointers aligned; patch 16 in every dtype)
// a thread copies 16-byte vectors, else elements (patch 14).
template <typename T>
__global__ void tubelet_gather_kernel(const T* __restrict__ video, const int64_t* __restrict__ ids,
                                      T* __restrict__ out, int64_t K, int hp, int wp, int patch, int tub, int64_t sb,
                                      int64_t sc, int64_t st, int64_t sh, bool vec16) {
  const int64_t r = blockIdx.x, n = ids[r];
  const int64_t t = n / (hp * wp), hh = (n / wp) % hp, ww = n % wp;
  const T* base = video + (r / K) * sb + t * tub * st + hh * patch * sh + ww * patch;
  const int runs = 3 * tub * patch, per_run = vec16 ? patch * static_cast<int>(sizeof(T)) / 16 : patch;
  T* row = out + r * runs * patch;
  for (int i = threadIdx.x; i < runs * per_run; i += blockDim.x) {
    const int j = i / per_run, u = i % per_run;  // run j: channel j / (tub patch), frame j / patch % tub, line j % p
    const T* src = base + (j / (tub * patch)) * sc + (j / patch % tub) * st + (j % patch) * sh;
    if (vec16) {
      reinterpret_cast<int4*>(row)[i] = reinterpret_cast<const int4*>(src)[u];
    } else {
      row[i] = src[u];
    }
  }
}

// -- host launchers (vmae2_cuda.h) -----------------------------------------------------------------------------

cudaError_t launch_token_gather(DType dtype, const void* x, const int64_t* ids, const void* pos, void* out, int64_t B,
                                int64_t N, int64_t K, int64_t C, cudaStream_t stream) {
  if (B * K == 0 || C == 0) return cudaSuccess;
  by_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xp = static_cast<const T*>(x);
    T* op = static_cast<T*>(out);
    if (pos != nullptr) {
      token_gather_kernel<T, true><<<B * K, threads_for(C), 0, stream>>>(xp, ids, static_cast<const T*>(pos), op, N,
                                                                          K, C, false);
    } else {
      const bool vec16 = (C * sizeof(T)) % 16 == 0 && aligned16(x) && aligned16(out);
      token_gather_kernel<T, false><<<B * K, threads_for(vec16 ? C * sizeof(T) / 16 : C), 0, stream>>>(
          xp, ids, nullptr, op, N, K, C, vec16);
    }
  });
  return cudaGetLastError();
}

cudaError_t launch_token_scatter(DType dtype, const void* src, const int64_t* ids, void* out, int64_t B, int64_t N,
                                 int64_t K, int64_t C, cudaStream_t stream) {
  if (B * K == 0 || C == 0) return cudaSuccess;
  by_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    token_scatter_kernel<T><<<B * K, threads_for(C), 0, stream>>>(static_cast<const T*>(src), ids,
                                                                   static_cast<T*>(out), N, K, C);
  });
  return cudaGetLastError();
}

cudaError_t launch_tubelet_gather(DType dtype, const void* video, const int64_t* ids, void* out, int64_t B, int64_t K,
                                  int hp, int wp, int patch, int tub, int64_t sb, int64_t sc, int64_t st, int64_t sh,
                                  cudaStream_t stream) {
  if (B * K == 0) return cudaSuccess;
  by_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t bytes = sizeof(T);
    const bool vec16 = (patch * bytes) % 16 == 0 && (sb * bytes) % 16 == 0 && (sc * bytes) % 16 == 0 &&
                       (st * bytes) % 16 == 0 && (sh * bytes) % 16 == 0 && aligned16(video) && aligned16(out);
    const int64_t units = 3 * tub * (vec16 ? patch * bytes / 16 : patch) * patch;
    tubelet_gather_kernel<T><<<B * K, threads_for(units), 0, stream>>>(static_cast<const T*>(video), ids,
                                                                        static_cast<T*>(out), K, hp, wp, patch, tub,
                                                                        sb, sc, st, sh, vec16);
  });
  return cudaGetLastError();
}

}  // namespace vmae2
