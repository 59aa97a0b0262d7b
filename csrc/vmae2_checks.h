// Argument checks shared by the CPU kernels (vmae2_cpu.cpp) and the CUDA binding (cuda/vmae2_cuda_binding.cpp), so
// both backends refuse the same inputs with the same messages.
#pragma once

#include <ATen/ATen.h>

namespace vmae2 {

inline void check_ids(const at::Tensor& ids, int64_t batch, const char* name) {
  TORCH_CHECK(ids.dim() == 2 && ids.size(0) == batch, name, " must be [B, K] with B = ", batch, ", got ",
              ids.sizes());
  TORCH_CHECK(ids.scalar_type() == at::kLong, name, " must be int64, got ", ids.scalar_type());
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
