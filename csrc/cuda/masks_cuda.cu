// CUDA kernels of the mask ids (running_cell_ids, tube_ids) and their host launchers (vmae2_cuda.h); CPU twin:
// ../masks_cpu.cpp. Reference: vmae2_kernels/masks/reference.py.
#include "vmae2_cuda_common.cuh"

namespace vmae2 {

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

// -- host launchers (vmae2_cuda.h) -----------------------------------------------------------------------------

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

}  // namespace vmae2
