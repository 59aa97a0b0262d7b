// Shared by the CPU kernels (*_cpu.cpp, registered by vmae2_ops.cpp) and the CUDA binding (cuda/vmae2_cuda_binding.cpp):
// the op list, so both
// register the same ops, and the argument checks, so both refuse the same inputs with the same messages.
#pragma once

#include <ATen/ATen.h>

// The ops of the vmae2_native library (schemas in vmae2_ops.cpp). Inside a TORCH_LIBRARY_IMPL(..., m) block,
// VMAE2_NATIVE_OPS(VMAE2_IMPL) registers each op's implementation: the function of that name visible there.
#define VMAE2_NATIVE_OPS(X) \
  X(token_gather)               \
  X(token_scatter)              \
  X(tubelet_gather)             \
  X(decoder_input)              \
  X(mask_token_grad)            \
  X(running_cell_ids)           \
  X(tube_ids)                   \
  X(recon_loss)                 \
  X(recon_loss_backward)
#define VMAE2_IMPL(op) m.impl(#op, &op);

namespace vmae2 {

inline void check_ids(const at::Tensor& ids, int64_t batch, const char* name) {
  TORCH_CHECK(ids.dim() == 2 && ids.size(0) == batch, name, " must be [B, K] with B = ", batch, ", got ",
              ids.sizes());
  TORCH_CHECK(ids.scalar_type() == at::kLong, name, " must be int64, got ", ids.scalar_type());
}

// Checks the arguments of decoder_input; returns the output dtype (the promotion of x_vis, mask_token and pos).
inline at::ScalarType check_decoder_input(const at::Tensor& x, const at::Tensor& vis, const at::Tensor& dec,
                                          const at::Tensor& token, const at::Tensor& pos) {
  TORCH_CHECK(x.dim() == 3, "x_vis must be [B, Nv, D], got ", x.sizes());
  check_ids(vis, x.size(0), "vis_ids");
  check_ids(dec, x.size(0), "dec_ids");
  TORCH_CHECK(vis.size(1) == x.size(1), "vis_ids must be [B, ", x.size(1), "], got ", vis.sizes());
  TORCH_CHECK(token.numel() == x.size(2) && pos.dim() == 2 && pos.size(1) == x.size(2), "mask_token and pos must have ",
              x.size(2), " channels");
  return at::promote_types(at::promote_types(x.scalar_type(), token.scalar_type()), pos.scalar_type());
}

// Checks the arguments of running_cell_ids: phase [B] of an integer dtype (any value: the kernels take it modulo 4),
// T' >= 1, an even non-negative H' x W' grid (2x2 cells tile the frame) and 0 <= m <= 4.
inline void check_running_cell_args(const at::Tensor& phase, int64_t T, int64_t H, int64_t W, int64_t m) {
  TORCH_CHECK(phase.dim() == 1 && at::isIntegralType(phase.scalar_type(), /*includeBool=*/false),
              "phase must be a [B] integer tensor, got ", phase.sizes(), " ", phase.scalar_type());
  TORCH_CHECK(T >= 1 && H >= 0 && W >= 0 && H % 2 == 0 && W % 2 == 0, "running-cell masking needs T' >= 1 and an "
              "even spatial grid, got T'=", T, ", H'=", H, ", W'=", W, " (use an image size giving even H'/W')");
  TORCH_CHECK(0 <= m && m <= 4, "masked_per_cell=", m, " must be in 0..4 (masked tokens per 2x2 cell)");
}

// Checks the arguments of tubelet_gather: video [B, 3, T, H, W] tiling into tubelets of tub x patch x patch, ids
// [B, K] int64.
inline void check_tubelet_args(const at::Tensor& video, const at::Tensor& ids, int64_t patch, int64_t tub) {
  TORCH_CHECK(video.dim() == 5 && video.size(1) == 3, "video must be [B, 3, T, H, W], got ", video.sizes());
  TORCH_CHECK(patch >= 1 && tub >= 1 && video.size(2) % tub == 0 && video.size(3) % patch == 0 &&
                  video.size(4) % patch == 0,
              "video ", video.sizes(), " does not tile into tubelets of ", tub, " frames and ", patch, "x", patch,
              " patches");
  check_ids(ids, video.size(0), "ids");
}

inline void check_loss_args(const at::Tensor& pred, const at::Tensor& video, const at::Tensor& ids,
                            const at::Tensor& w, int64_t patch, int64_t tub) {
  TORCH_CHECK(video.dim() == 5 && video.size(1) == 3, "video must be [B, 3, T, H, W], got ", video.sizes());
  check_ids(ids, video.size(0), "dec_ids");
  TORCH_CHECK(pred.dim() == 3 && pred.size(0) == ids.size(0) && pred.size(1) == ids.size(1) &&
                  pred.size(2) == 3 * tub * patch * patch,
              "pred must be [B, Nd, ", 3 * tub * patch * patch, "], got ", pred.sizes());
  TORCH_CHECK(w.sizes() == ids.sizes(), "weights must be ", ids.sizes(), ", got ", w.sizes());
}

}  // namespace vmae2
