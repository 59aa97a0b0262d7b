// Host launchers of the CUDA kernels, one source per op family (gather_cuda.cu, decoder_cuda.cu, masks_cuda.cu,
// loss_cuda.cu): raw device pointers, sizes and a stream, no torch types.
// The torch binding (vmae2_cuda_binding.cpp) allocates outputs, converts dtypes and checks shapes; these only launch.
// Every launcher returns cudaGetLastError() after its launches (cudaSuccess when nothing was launched).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace vmae2 {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// out[b, k] = x[b, ids[b, k]] (+ pos[ids[b, k]]); pos (nullable) has x's dtype; out is [B, K, C].
cudaError_t launch_token_gather(DType dtype, const void* x, const int64_t* ids, const void* pos, void* out, int64_t B,
                                int64_t N, int64_t K, int64_t C, cudaStream_t stream);

// out[b, ids[b, k]] = src[b, k] on an output [B, N, C] the caller has zeroed (ids unique per row).
cudaError_t launch_token_scatter(DType dtype, const void* src, const int64_t* ids, void* out, int64_t B, int64_t N,
                                 int64_t K, int64_t C, cudaStream_t stream);

// out [B, K, 3 * tub * patch * patch]: row k of sample b holds tubelet ids[b, k]'s pixels in (c, p0, p1, p2) order;
// video [B, 3, T, H, W] with strides sb, sc, st, sh (elements) and unit stride along W, grid (T / tub, hp, wp).
cudaError_t launch_tubelet_gather(DType dtype, const void* video, const int64_t* ids, void* out, int64_t B, int64_t K,
                                  int hp, int wp, int patch, int tub, int64_t sb, int64_t sc, int64_t st, int64_t sh,
                                  cudaStream_t stream);

// out [B, Nv + Nd, D] = [x + pos[vis] | token + pos[dec]]: x and the table pos [N, D] read in their own types, token
// [D] fp32, fp32 sums rounded once to out_dtype: fp32, or x's type when x and pos share it (else
// cudaErrorInvalidValue, nothing launched).
cudaError_t launch_decoder_input(DType x_dtype, const void* x, const int64_t* vis, const int64_t* dec,
                                 const float* token, DType pos_dtype, const void* pos, DType out_dtype, void* out,
                                 int64_t B, int64_t Nv, int64_t Nd, int64_t D, cudaStream_t stream);

// Rows of `partial` [mask_token_grad_blocks(B * (L - Nv)), D] that launch_mask_token_grad fills; the caller sums
// them (fixed order: deterministic).
int64_t mask_token_grad_blocks(int64_t rows);
// launch_mask_token_grad's 1-D grid: mask_token_grad_blocks(rows) row blocks x ceil(D / threads) column blocks, the
// column block the fast index (grid axis 0 takes up to 2^31 - 1 blocks, axes 1 and 2 only 65535).
struct Launch1D {
  int64_t blocks;
  int threads;
};
Launch1D mask_token_grad_launch(int64_t rows, int64_t D);
cudaError_t launch_mask_token_grad(DType dtype, const void* grad, float* partial, int64_t B, int64_t Nv, int64_t L,
                                   int64_t D, cudaStream_t stream);

// Decoder-visible ids [B, T*H*W*(4-m)/4] of running-cell masks from int64 phases [B].
cudaError_t launch_running_cell_ids(const int64_t* phase, int64_t* out, int64_t B, int T, int H, int W, int m,
                                    cudaStream_t stream);

// Encoder-visible ids [B, T * (HW - M)] of tube masks from fp32 keys [B, HW]: the M smallest keys (ties: lower
// index) are masked in every frame, the rest kept in ascending order.
cudaError_t launch_tube_ids(const float* keys, int64_t* out, int64_t B, int HW, int T, int M, cudaStream_t stream);

// The fused reconstruction loss, forward (per_token [B * Nd] = w * mean((pred - target)^2)) or backward
// (grad = (pred - target) * scale[0] * w, in pred's dtype). video [B, 3, T, H, W] with unit stride on W.
struct ReconLossArgs {
  DType pred_dtype, video_dtype;
  const void* pred;        // [B, Nd, 3 * tub * patch * patch], contiguous, layout (p0 p1 p2 c)
  const void* video;       // strides below (elements), last dimension contiguous
  const int64_t* ids;      // [B, Nd] decoder-visible token ids
  const float* weight;     // [B, Nd]
  const float* scale;      // backward: one device float, grad_out * 2 / (F * sum(w))
  float* per_token;        // forward output [B * Nd]
  void* grad;              // backward output, pred's shape and dtype
  int64_t B, Nd;
  int hp, wp, patch, tub;  // token grid (H / patch, W / patch), patch size, tubelet size
  int target;  // 0 pixels, 1 VideoMAE (per channel), 2 MAE (per patch)
  bool backward;
  int64_t stride_b, stride_c, stride_t, stride_h;
  float mean[3], std[3];
};
// Dynamic shared memory of one recon_loss block: the fp32 target [3][tub * patch * patch] and 32 reduction slots.
// Above 48 KB (3 * tub * patch^2 > 12256) the launcher opts in (cudaFuncAttributeMaxDynamicSharedMemorySize); past
// the device's opt-in limit (cudaDevAttrMaxSharedMemoryPerBlockOptin) it returns cudaErrorInvalidValue.
inline size_t recon_loss_smem_bytes(int patch, int tub) {
  return (3 * static_cast<size_t>(tub) * patch * patch + 32) * sizeof(float);
}
cudaError_t launch_recon_loss(const ReconLossArgs& args, cudaStream_t stream);

}  // namespace vmae2
