// CUDA kernels of the fused reconstruction loss and its gradient and their host launcher (vmae2_cuda.h); CPU twin:
// ../loss_cpu.cpp. Reference: vmae2_kernels/loss/reference.py.
#include "vmae2_cuda_common.cuh"

namespace vmae2 {

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
