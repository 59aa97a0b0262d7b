// The CPU kernels of the vmae2_native ops, one source per op family (gather_cpu.cpp, decoder_cpu.cpp,
// masks_cpu.cpp, loss_cpu.cpp), declared for vmae2_ops.cpp, which registers them. Each has the signature of its
// schema in vmae2_ops.cpp.
//
// Conventions (as the references in vmae2_kernels/<family>/reference.py): tokens [B, N, C] in (t, h, w) order; ids
// int64 [B, K], unique per row, any order; arithmetic in fp32 (one rounding to the output dtype); fp32/bf16/fp16
// inputs. Parallel loops use at::parallel_for (OpenMP pragmas do not compile inside AT_DISPATCH lambdas).
#pragma once

#include <ATen/ATen.h>

namespace vmae2::cpu {

at::Tensor token_gather(const at::Tensor& x, const at::Tensor& ids, const c10::optional<at::Tensor>& pos);
at::Tensor token_scatter(const at::Tensor& src, const at::Tensor& ids, int64_t num_tokens);
at::Tensor tubelet_gather(const at::Tensor& video, const at::Tensor& ids, int64_t patch, int64_t tub);
at::Tensor decoder_input(const at::Tensor& x_vis, const at::Tensor& vis_ids, const at::Tensor& dec_ids,
                         const at::Tensor& mask_token, const at::Tensor& pos);
at::Tensor mask_token_grad(const at::Tensor& grad, int64_t num_visible);
at::Tensor running_cell_ids(const at::Tensor& phase, int64_t T, int64_t H, int64_t W, int64_t m);
at::Tensor tube_ids(const at::Tensor& keys, int64_t num_frames, int64_t num_masked);
at::Tensor recon_loss(const at::Tensor& pred, const at::Tensor& video, const at::Tensor& dec_ids,
                      const at::Tensor& weights, int64_t patch, int64_t tub, int64_t target,
                      at::ArrayRef<double> mean, at::ArrayRef<double> std);
at::Tensor recon_loss_backward(const at::Tensor& grad_out, const at::Tensor& pred, const at::Tensor& video,
                               const at::Tensor& dec_ids, const at::Tensor& weights, int64_t patch, int64_t tub,
                               int64_t target, at::ArrayRef<double> mean, at::ArrayRef<double> std);

}  // namespace vmae2::cpu
