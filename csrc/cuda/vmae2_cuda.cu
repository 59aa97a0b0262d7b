// CUDA device code of the vmae2_kernels ops, free of torch headers (compiles with plain nvcc for sm_80/sm_90).
// A thin torch binding (not in this file) launches these on the current stream; CI compiles this file and
// checks ptxas' register/spill report. Conventions as kernels/reference.py: ids int64 [B, K] ascending and
// unique per row; fp32 arithmetic with one rounding to the output type; T in {float, __half, __nv_bfloat16}.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

namespace vmae2 {

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// One block per (sample, row): out[b, k] = x[b, ids[b, k]] (+ pos[ids] rounded to T). Rows are copied with
// 16-byte vectors when C * sizeof(T) is a multiple of 16 (every ViT width), else element by element.
template <typename T, bool HAS_POS>
__global__ void token_gather_kernel(const T* __restrict__ x, const int64_t* __restrict__ ids,
                                    const T* __restrict__ pos, T* __restrict__ out, int64_t N, int64_t K, int64_t C) {
  const int64_t r = blockIdx.x;  // b * K + k
  const int64_t b = r / K, token = ids[r];
  const T* src = x + (b * N + token) * C;
  T* dst = out + r * C;
  if (!HAS_POS && (C * sizeof(T)) % 16 == 0) {
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

// [x_vis + pos[vis_ids] | mask_token + pos[dec_ids]]; fp32 sums, one rounding to O.
template <typename T, typename O>
__global__ void decoder_input_kernel(const T* __restrict__ x, const int64_t* __restrict__ vis,
                                     const int64_t* __restrict__ dec, const float* __restrict__ token,
                                     const float* __restrict__ pos, O* __restrict__ out, int64_t Nv, int64_t Nd,
                                     int64_t D) {
  const int64_t L = Nv + Nd, r = blockIdx.x, b = r / L, i = r % L;
  const bool visible = i < Nv;
  const int64_t id = visible ? vis[b * Nv + i] : dec[b * Nd + (i - Nv)];
  for (int64_t c = threadIdx.x; c < D; c += blockDim.x) {
    const float base = visible ? to_f(x[(b * Nv + i) * D + c]) : token[c];
    out[r * D + c] = from_f<O>(base + pos[id * D + c]);
  }
}

// Column sums of the mask-token rows: grid (ceil(D / blockDim), P) partial rows, summed by the host op.
template <typename T>
__global__ void mask_token_grad_kernel(const T* __restrict__ grad, float* __restrict__ partial, int64_t Nv,
                                       int64_t L, int64_t D, int64_t total_rows, int64_t rows_per_block) {
  const int64_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= D) return;
  float acc = 0.f;
  const int64_t Nd = L - Nv, first = blockIdx.y * rows_per_block;
  for (int64_t j = first; j < first + rows_per_block && j < total_rows; ++j) {
    acc += to_f(grad[((j / Nd) * L + Nv + j % Nd) * D + c]);
  }
  partial[blockIdx.y * D + c] = acc;
}

// Decoder-visible ids of running-cell masks; one block per (sample, temporal slice), prefix sum in shared memory.
__global__ void running_cell_ids_kernel(const int64_t* __restrict__ phase, int64_t* __restrict__ out, int T, int H,
                                        int W, int m) {
  extern __shared__ int keep[];
  const int b = blockIdx.x / T, t = blockIdx.x % T, HW = H * W, kept = HW * (4 - m) / 4;
  for (int n = threadIdx.x; n < HW; n += blockDim.x) {
    const int h = n / W, w = n % W;
    keep[n] = ((2 * (h % 2) + (w % 2) + static_cast<int>(phase[b]) + t + 1) % 4) >= m;
  }
  __syncthreads();
  if (threadIdx.x == 0) {  // HW <= 1024: a serial scan is cheaper than a block scan here
    int slot = 0;
    for (int n = 0; n < HW; ++n)
      if (keep[n]) out[(static_cast<int64_t>(b) * T + t) * kept + slot++] = static_cast<int64_t>(t) * HW + n;
  }
}

// Fused reconstruction loss: one block per token, target built in registers/shared memory, never stored.
// forward: per_token[r] = w * mean((pred - target)^2); backward: grad = (pred - target) * scale * w.
template <typename P, typename V, bool BACKWARD>
__global__ void recon_loss_kernel(const P* __restrict__ pred, const V* __restrict__ video,
                                  const int64_t* __restrict__ ids, const float* __restrict__ weight,
                                  const float* __restrict__ scale, float* __restrict__ per_token,
                                  P* __restrict__ grad, int64_t Nd, int hp, int wp, int patch, int tub, bool normalize,
                                  int64_t sb, int64_t sc, int64_t st, int64_t sh, float m0, float m1, float m2,
                                  float s0, float s1, float s2) {
  extern __shared__ float smem[];  // [3][Ppix] target, then 2 x 32 floats of block-reduction scratch
  const int Ppix = tub * patch * patch;
  float* target = smem;
  float* scratch = smem + 3 * Ppix;
  const int64_t r = blockIdx.x, b = r / Nd, n = ids[r];
  const int t = n / (hp * wp), hh = (n / wp) % hp, ww = n % wp;
  const float mean[3] = {m0, m1, m2}, stdv[3] = {s0, s1, s2};
  for (int c = 0; c < 3; ++c) {
    const V* base = video + b * sb + c * sc + static_cast<int64_t>(t) * tub * st + static_cast<int64_t>(hh) * patch * sh +
                    ww * patch;
    float sum = 0.f;
    for (int i = threadIdx.x; i < Ppix; i += blockDim.x) {
      const int p0 = i / (patch * patch), p1 = (i / patch) % patch, p2 = i % patch;
      const float v = to_f(base[p0 * st + p1 * sh + p2]) * stdv[c] + mean[c];
      target[c * Ppix + i] = v;
      sum += v;
    }
    if (normalize) {  // block sums via warp shuffles
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_down_sync(0xffffffff, sum, o);
      if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = sum;
      __syncthreads();
      float mu = 0.f;
      for (int w = 0; w < (blockDim.x + 31) / 32; ++w) mu += scratch[w];
      mu /= Ppix;
      float sq = 0.f;
      for (int i = threadIdx.x; i < Ppix; i += blockDim.x) {
        const float d = target[c * Ppix + i] - mu;
        sq += d * d;
      }
      for (int o = 16; o > 0; o >>= 1) sq += __shfl_down_sync(0xffffffff, sq, o);
      if ((threadIdx.x & 31) == 0) scratch[32 + (threadIdx.x >> 5)] = sq;
      __syncthreads();
      float var = 0.f;
      for (int w = 0; w < (blockDim.x + 31) / 32; ++w) var += scratch[32 + w];
      const float inv = 1.f / (sqrtf(var / (Ppix - 1)) + 1e-6f);
      for (int i = threadIdx.x; i < Ppix; i += blockDim.x) target[c * Ppix + i] = (target[c * Ppix + i] - mu) * inv;
      __syncthreads();
    }
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
  for (int o = 16; o > 0; o >>= 1) sq += __shfl_down_sync(0xffffffff, sq, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = sq;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f;
    for (int w = 0; w < (blockDim.x + 31) / 32; ++w) total += scratch[w];
    per_token[r] = total / F * weight[r];
  }
}

// Explicit instantiations: everything the binding launches is compiled (and checked by ptxas) in CI.
#define VMAE2_INSTANTIATE(T)                                                                                    \
  template __global__ void token_gather_kernel<T, false>(const T*, const int64_t*, const T*, T*, int64_t,     \
                                                         int64_t, int64_t);                                    \
  template __global__ void token_gather_kernel<T, true>(const T*, const int64_t*, const T*, T*, int64_t,      \
                                                        int64_t, int64_t);                                     \
  template __global__ void token_scatter_kernel<T>(const T*, const int64_t*, T*, int64_t, int64_t, int64_t); \
  template __global__ void decoder_input_kernel<T, float>(const T*, const int64_t*, const int64_t*,          \
                                                          const float*, const float*, float*, int64_t,        \
                                                          int64_t, int64_t);                                   \
  template __global__ void mask_token_grad_kernel<T>(const T*, float*, int64_t, int64_t, int64_t, int64_t,   \
                                                     int64_t);                                                 \
  template __global__ void recon_loss_kernel<T, float, false>(                                                \
      const T*, const float*, const int64_t*, const float*, const float*, float*, T*, int64_t, int, int, int, \
      int, bool, int64_t, int64_t, int64_t, int64_t, float, float, float, float, float, float);               \
  template __global__ void recon_loss_kernel<T, float, true>(                                                 \
      const T*, const float*, const int64_t*, const float*, const float*, float*, T*, int64_t, int, int, int, \
      int, bool, int64_t, int64_t, int64_t, int64_t, float, float, float, float, float, float);

VMAE2_INSTANTIATE(float)
VMAE2_INSTANTIATE(__half)
VMAE2_INSTANTIATE(__nv_bfloat16)

}  // namespace vmae2
