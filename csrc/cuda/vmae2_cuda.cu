// CUDA kernels of the vmae2_kernels ops and their host launchers (vmae2_cuda.h), free of torch headers: plain nvcc
// compiles this file for sm_80/sm_90 in CI, which also checks ptxas' register/spill report. The torch binding
// (vmae2_cuda_binding.cpp) calls the launchers on the current stream. Conventions as vmae2_kernels/reference.py: ids
// int64 [B, K] unique per row, any order; fp32 arithmetic with one rounding to the output type;
// T in {float, __half, __nv_bfloat16}.
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

// [x_vis + pos[vis_ids] | mask_token + pos[dec_ids]]: x in T, the table in P, each read in its own type; fp32 sums,
// one rounding to O.
template <typename T, typename P, typename O>
__global__ void decoder_input_kernel(const T* __restrict__ x, const int64_t* __restrict__ vis,
                                     const int64_t* __restrict__ dec, const float* __restrict__ token,
                                     const P* __restrict__ pos, O* __restrict__ out, int64_t Nv, int64_t Nd,
                                     int64_t D) {
  const int64_t L = Nv + Nd, r = blockIdx.x, b = r / L, i = r % L;
  const bool visible = i < Nv;
  const int64_t id = visible ? vis[b * Nv + i] : dec[b * Nd + (i - Nv)];
  for (int64_t c = threadIdx.x; c < D; c += blockDim.x) {
    const float base = visible ? to_f(x[(b * Nv + i) * D + c]) : token[c];
    out[r * D + c] = from_f<O>(base + to_f(pos[id * D + c]));
  }
}

// Column sums of the mask-token rows into P partial rows, summed by the host op. 1-D grid of P x col_blocks blocks:
// block i sums rows_per_block rows of partial row i / col_blocks, columns of block i % col_blocks.
template <typename T>
__global__ void mask_token_grad_kernel(const T* __restrict__ grad, float* __restrict__ partial, int64_t Nv,
                                       int64_t L, int64_t D, int64_t total_rows, int64_t rows_per_block,
                                       int64_t col_blocks) {
  const int64_t part = blockIdx.x / col_blocks, c = (blockIdx.x % col_blocks) * blockDim.x + threadIdx.x;
  if (c >= D) return;
  float acc = 0.f;
  const int64_t Nd = L - Nv, first = part * rows_per_block;
  for (int64_t j = first; j < first + rows_per_block && j < total_rows; ++j) {
    acc += to_f(grad[((j / Nd) * L + Nv + j % Nd) * D + c]);
  }
  partial[part * D + c] = acc;
}

// Decoder-visible ids of running-cell masks; one block per (sample, temporal slice), prefix sum in shared memory.
// The phase is taken modulo 4 into 0..3 (negative and large phases included).
__global__ void running_cell_ids_kernel(const int64_t* __restrict__ phase, int64_t* __restrict__ out, int T, int H,
                                        int W, int m) {
  extern __shared__ int keep[];
  const int b = blockIdx.x / T, t = blockIdx.x % T, HW = H * W, kept = HW * (4 - m) / 4;
  const int p = static_cast<int>(((phase[b] % 4) + 4) % 4);
  for (int n = threadIdx.x; n < HW; n += blockDim.x) {
    const int h = n / W, w = n % W;
    keep[n] = ((2 * (h % 2) + (w % 2) + p + t + 1) % 4) >= m;
  }
  __syncthreads();
  if (threadIdx.x == 0) {  // HW <= 1024: a serial scan is cheaper than a block scan here
    int slot = 0;
    for (int n = 0; n < HW; ++n)
      if (keep[n]) out[(static_cast<int64_t>(b) * T + t) * kept + slot++] = static_cast<int64_t>(t) * HW + n;
  }
}

// Encoder-visible ids of tube masks; one block per sample. Each key's rank (ties: lower index first) decides
// masked (rank < M) or kept; a kept position's slot is the number of kept positions before it. O(HW^2 / threads)
// compares, no sort: HW is at most a few hundred (196 for ViT-B, 256 for ViT-g).
__global__ void tube_ids_kernel(const float* __restrict__ keys, int64_t* __restrict__ out, int HW, int T, int M) {
  extern __shared__ float tube_smem[];  // [HW] keys, then [HW] keep flags
  float* key = tube_smem;
  int* keep = reinterpret_cast<int*>(tube_smem + HW);
  const int64_t b = blockIdx.x;
  for (int n = threadIdx.x; n < HW; n += blockDim.x) key[n] = keys[b * HW + n];
  __syncthreads();
  for (int n = threadIdx.x; n < HW; n += blockDim.x) {
    const float k = key[n];
    int rank = 0;
    for (int j = 0; j < HW; ++j) rank += (key[j] < k) || (key[j] == k && j < n);
    keep[n] = rank >= M;
  }
  __syncthreads();
  const int kept = HW - M;
  for (int n = threadIdx.x; n < HW; n += blockDim.x) {
    if (!keep[n]) continue;
    int slot = 0;
    for (int j = 0; j < n; ++j) slot += keep[j];
    for (int t = 0; t < T; ++t) out[(b * T + t) * kept + slot] = static_cast<int64_t>(t) * HW + n;
  }
}

// Sum of every thread's `v`, returned to every thread: warp shuffles, then the warps' partials in `scratch` (32 floats)
// read in a fixed order. Starts with a barrier, so `scratch` may be reused from one call to the next.
__device__ float block_sum(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffff, v, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < (blockDim.x + 31) / 32; ++w) total += scratch[w];
  return total;
}

// Normalises x[0..n) (shared memory) in place: (x - mean) / (std + 1e-6) (VideoMAE) or, with `eps_in_var`,
// (x - mean) / sqrt(var + 1e-6) (MAE); unbiased, two passes.
__device__ void normalize_run(float* x, int n, bool eps_in_var, float* scratch) {
  float sum = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) sum += x[i];
  const float mu = block_sum(sum, scratch) / n;
  float sq = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) sq += (x[i] - mu) * (x[i] - mu);
  const float var = block_sum(sq, scratch) / (n - 1);
  const float inv = eps_in_var ? rsqrtf(var + 1e-6f) : 1.f / (sqrtf(var) + 1e-6f);
  for (int i = threadIdx.x; i < n; i += blockDim.x) x[i] = (x[i] - mu) * inv;
}

// Fused reconstruction loss: one block per token, target built in registers/shared memory, never stored.
// forward: per_token[r] = w * mean((pred - target)^2); backward: grad = (pred - target) * scale * w.
// target: 0 the pixels, 1 VideoMAE (per channel), 2 MAE (per patch over pixels and channels).
template <typename P, typename V, bool BACKWARD>
__global__ void recon_loss_kernel(const P* __restrict__ pred, const V* __restrict__ video,
                                  const int64_t* __restrict__ ids, const float* __restrict__ weight,
                                  const float* __restrict__ scale, float* __restrict__ per_token,
                                  P* __restrict__ grad, int64_t Nd, int hp, int wp, int patch, int tub, int mode,
                                  int64_t sb, int64_t sc, int64_t st, int64_t sh, float m0, float m1, float m2,
                                  float s0, float s1, float s2) {
  extern __shared__ float smem[];  // [3][Ppix] target, then 32 floats of block-reduction scratch
  const int Ppix = tub * patch * patch;
  float* target = smem;
  float* scratch = smem + 3 * Ppix;
  const int64_t r = blockIdx.x, b = r / Nd, n = ids[r];
  const int t = n / (hp * wp), hh = (n / wp) % hp, ww = n % wp;
  const float mean[3] = {m0, m1, m2}, stdv[3] = {s0, s1, s2};
  for (int c = 0; c < 3; ++c) {
    const V* base = video + b * sb + c * sc + static_cast<int64_t>(t) * tub * st + static_cast<int64_t>(hh) * patch * sh +
                    ww * patch;
    for (int i = threadIdx.x; i < Ppix; i += blockDim.x) {
      const int p0 = i / (patch * patch), p1 = (i / patch) % patch, p2 = i % patch;
      target[c * Ppix + i] = to_f(base[p0 * st + p1 * sh + p2]) * stdv[c] + mean[c];
    }
    if (mode == 1) normalize_run(target + c * Ppix, Ppix, false, scratch);  // each thread reads its own writes
  }
  if (mode == 2) {
    __syncthreads();  // the whole patch is read across threads
    normalize_run(target, 3 * Ppix, true, scratch);
  }
  __syncthreads();
  const int F = 3 * Ppix;
  const P* row = pred + r * F;
  if (BACKWARD) {
    const float k = scale[0] * weight[r];
    for (int f = threadIdx.x; f < F; f += blockDim.x) {
      grad[r * F + f] = from_f<P>((to_f(row[f]) - target[(f % 3) * Ppix + f / 3]) * k);
    }
    return;
  }
  float sq = 0.f;
  for (int f = threadIdx.x; f < F; f += blockDim.x) {
    const float d = to_f(row[f]) - target[(f % 3) * Ppix + f / 3];
    sq += d * d;
  }
  const float total = block_sum(sq, scratch);
  if (threadIdx.x == 0) per_token[r] = total / F * weight[r];
}


// -- host launchers (vmae2_cuda.h) -----------------------------------------------------------------------------

namespace {

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
int threads_for(int64_t work, int most = 256) {
  return static_cast<int>(std::min<int64_t>(most, std::max<int64_t>(32, (work + 31) / 32 * 32)));
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Lets `kernel` take `bytes` of dynamic shared memory: above the default 48 KB a kernel must opt in; past the
// device's opt-in limit cudaFuncSetAttribute returns cudaErrorInvalidValue.
template <typename Kernel>
cudaError_t allow_smem(Kernel* kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

constexpr int64_t kMaskGradRows = 64;  // rows summed per block of the mask-token gradient

}  // namespace

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

cudaError_t launch_decoder_input(DType x_dtype, const void* x, const int64_t* vis, const int64_t* dec,
                                 const float* token, DType pos_dtype, const void* pos, DType out_dtype, void* out,
                                 int64_t B, int64_t Nv, int64_t Nd, int64_t D, cudaStream_t stream) {
  if (B * (Nv + Nd) == 0 || D == 0) return cudaSuccess;
  // The output is fp32, or x's type when x and the table share it (the promoted type of the three inputs).
  if (out_dtype != DType::kFloat32 && (out_dtype != x_dtype || out_dtype != pos_dtype)) return cudaErrorInvalidValue;
  by_dtype(x_dtype, [&](auto x_tag) {
    using T = typename decltype(x_tag)::type;
    by_dtype(pos_dtype, [&](auto pos_tag) {
      using P = typename decltype(pos_tag)::type;
      const auto* xp = static_cast<const T*>(x);
      const auto* pp = static_cast<const P*>(pos);
      const int64_t rows = B * (Nv + Nd);  // one block per row, on grid axis 0
      if (out_dtype == DType::kFloat32) {
        decoder_input_kernel<T, P, float><<<rows, threads_for(D), 0, stream>>>(xp, vis, dec, token, pp,
                                                                               static_cast<float*>(out), Nv, Nd, D);
      } else if constexpr (std::is_same_v<T, P>) {
        decoder_input_kernel<T, P, T><<<rows, threads_for(D), 0, stream>>>(xp, vis, dec, token, pp,
                                                                           static_cast<T*>(out), Nv, Nd, D);
      }
    });
  });
  return cudaGetLastError();
}

int64_t mask_token_grad_blocks(int64_t rows) { return std::max<int64_t>(1, (rows + kMaskGradRows - 1) / kMaskGradRows); }

Launch1D mask_token_grad_launch(int64_t rows, int64_t D) {
  const int threads = threads_for(D, 128);
  return {mask_token_grad_blocks(rows) * ((D + threads - 1) / threads), threads};
}

cudaError_t launch_mask_token_grad(DType dtype, const void* grad, float* partial, int64_t B, int64_t Nv, int64_t L,
                                   int64_t D, cudaStream_t stream) {
  const int64_t rows = B * (L - Nv);
  if (D == 0) return cudaSuccess;
  const Launch1D launch = mask_token_grad_launch(rows, D);
  if (launch.blocks > INT32_MAX) return cudaErrorInvalidConfiguration;  // past grid axis 0's 2^31 - 1 blocks
  const int64_t col_blocks = (D + launch.threads - 1) / launch.threads;
  by_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    mask_token_grad_kernel<T><<<static_cast<unsigned>(launch.blocks), launch.threads, 0, stream>>>(
        static_cast<const T*>(grad), partial, Nv, L, D, rows, kMaskGradRows, col_blocks);
  });
  return cudaGetLastError();
}

cudaError_t launch_running_cell_ids(const int64_t* phase, int64_t* out, int64_t B, int T, int H, int W, int m,
                                    cudaStream_t stream) {
  if (B * T == 0 || H * W == 0) return cudaSuccess;
  const size_t smem = static_cast<size_t>(H) * W * sizeof(int);
  if (const cudaError_t err = allow_smem(running_cell_ids_kernel, smem); err != cudaSuccess) return err;
  running_cell_ids_kernel<<<B * T, threads_for(H * W), smem, stream>>>(phase, out, T, H, W, m);
  return cudaGetLastError();
}

cudaError_t launch_tube_ids(const float* keys, int64_t* out, int64_t B, int HW, int T, int M, cudaStream_t stream) {
  if (B == 0 || HW == 0) return cudaSuccess;
  const size_t smem = static_cast<size_t>(HW) * (sizeof(float) + sizeof(int));
  if (const cudaError_t err = allow_smem(tube_ids_kernel, smem); err != cudaSuccess) return err;
  tube_ids_kernel<<<B, threads_for(HW), smem, stream>>>(keys, out, HW, T, M);
  return cudaGetLastError();
}

cudaError_t launch_recon_loss(const ReconLossArgs& a, cudaStream_t stream) {
  if (a.B * a.Nd == 0) return cudaSuccess;
  const size_t smem = recon_loss_smem_bytes(a.patch, a.tub);
  const int threads = threads_for(a.tub * a.patch * a.patch);
  cudaError_t err = cudaSuccess;
  by_dtype(a.pred_dtype, [&](auto ptag) {
    using P = typename decltype(ptag)::type;
    by_dtype(a.video_dtype, [&](auto vtag) {
      using V = typename decltype(vtag)::type;
      auto kernel = a.backward ? recon_loss_kernel<P, V, true> : recon_loss_kernel<P, V, false>;
      err = allow_smem(kernel, smem);
      if (err != cudaSuccess) return;
      kernel<<<a.B * a.Nd, threads, smem, stream>>>(
          static_cast<const P*>(a.pred), static_cast<const V*>(a.video), a.ids, a.weight, a.scale, a.per_token,
          static_cast<P*>(a.grad), a.Nd, a.hp, a.wp, a.patch, a.tub, a.target, a.stride_b, a.stride_c,
          a.stride_t, a.stride_h, a.mean[0], a.mean[1], a.mean[2], a.std[0], a.std[1], a.std[2]);
    });
  });
  return err != cudaSuccess ? err : cudaGetLastError();
}

}  // namespace vmae2
