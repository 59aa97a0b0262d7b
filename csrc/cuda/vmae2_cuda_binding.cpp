// Thin torch binding of the CUDA kernels: CUDA-key implementations of the vmae2_native ops whose schemas
// vmae2_ops.cpp defines (TORCH_LIBRARY, once). Each op checks its arguments, allocates the output, converts what
// the kernels do not take natively (token_gather's pos to x's dtype; the mask token, keys and weights to fp32) and
// calls the launcher (vmae2_cuda.h) on the current stream of the input's device. No device code here: g++ compiles
// this file with torch's and the CUDA toolkit's headers (CI checks it with -fsyntax-only).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <utility>

#include "../vmae2_checks.h"
#include "vmae2_cuda.h"

namespace {

using vmae2::check_ids;
using vmae2::DType;

DType dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, name, ": the CUDA kernels take float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

void check_cuda(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), name, " must be on ", like.device(), ", got ", t.device());
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// The [B, rows, C] tensor and the ids of a gather or scatter, checked and made contiguous (under the caller's guard).
std::pair<at::Tensor, at::Tensor> rows_and_ids(const at::Tensor& rows, const at::Tensor& ids, const char* expected) {
  TORCH_CHECK(rows.dim() == 3, expected, ", got ", rows.sizes());
  check_ids(ids, rows.size(0), "ids");
  check_cuda(ids, rows, "ids");
  return {rows.contiguous(), ids.contiguous()};
}

at::Tensor token_gather(const at::Tensor& x_in, const at::Tensor& ids_in, const c10::optional<at::Tensor>& pos_in) {
  c10::cuda::CUDAGuard guard(x_in.device());
  const auto [x, ids] = rows_and_ids(x_in, ids_in, "x must be [B, N, C]");
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2), K = ids.size(1);
  at::Tensor pos;
  if (pos_in.has_value()) {
    check_cuda(*pos_in, x_in, "pos");
    TORCH_CHECK(pos_in->dim() == 2 && pos_in->size(0) == N && pos_in->size(1) == C, "pos must be [", N, ", ", C,
                "], got ", pos_in->sizes());
    pos = pos_in->to(x.scalar_type()).contiguous();
  }
  auto out = at::empty({B, K, C}, x.options());
  C10_CUDA_CHECK(vmae2::launch_token_gather(dtype_of(x, "x"), x.const_data_ptr(), ids.const_data_ptr<int64_t>(),
                                            pos.defined() ? pos.const_data_ptr() : nullptr, out.mutable_data_ptr(),
                                            B, N, K, C, stream()));
  return out;
}

at::Tensor token_scatter(const at::Tensor& src_in, const at::Tensor& ids_in, int64_t num_tokens) {
  c10::cuda::CUDAGuard guard(src_in.device());
  const auto [src, ids] = rows_and_ids(src_in, ids_in, "src must be [B, K, C]");
  const int64_t B = src.size(0), K = src.size(1), C = src.size(2);
  auto out = at::zeros({B, num_tokens, C}, src.options());
  C10_CUDA_CHECK(vmae2::launch_token_scatter(dtype_of(src, "src"), src.const_data_ptr(), ids.const_data_ptr<int64_t>(),
                                             out.mutable_data_ptr(), B, num_tokens, K, C, stream()));
  return out;
}

at::Tensor tubelet_gather(const at::Tensor& video_in, const at::Tensor& ids_in, int64_t patch, int64_t tub) {
  vmae2::check_tubelet_args(video_in, ids_in, patch, tub);
  check_cuda(ids_in, video_in, "ids");
  c10::cuda::CUDAGuard guard(video_in.device());
  auto video = video_in.stride(4) == 1 ? video_in : video_in.contiguous();
  auto ids = ids_in.contiguous();
  const int64_t B = video.size(0), K = ids.size(1);
  auto out = at::empty({B, K, 3 * tub * patch * patch}, video.options());
  C10_CUDA_CHECK(vmae2::launch_tubelet_gather(dtype_of(video, "video"), video.const_data_ptr(),
                                              ids.const_data_ptr<int64_t>(), out.mutable_data_ptr(), B, K,
                                              static_cast<int>(video.size(3) / patch),
                                              static_cast<int>(video.size(4) / patch), static_cast<int>(patch),
                                              static_cast<int>(tub), video.stride(0), video.stride(1), video.stride(2),
                                              video.stride(3), stream()));
  return out;
}

at::Tensor decoder_input(const at::Tensor& x_in, const at::Tensor& vis_in, const at::Tensor& dec_in,
                         const at::Tensor& token_in, const at::Tensor& pos_in) {
  const auto out_type = vmae2::check_decoder_input(x_in, vis_in, dec_in, token_in, pos_in);
  for (const auto* t : {&vis_in, &dec_in, &token_in, &pos_in}) check_cuda(*t, x_in, "decoder_input argument");
  c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous();
  auto vis = vis_in.contiguous();
  auto dec = dec_in.contiguous();
  auto token = token_in.to(at::kFloat).contiguous().view({-1});  // D values
  auto pos = pos_in.contiguous();  // read in its own dtype: a bf16 table stays bf16
  const int64_t B = x.size(0), Nv = x.size(1), D = x.size(2), Nd = dec.size(1);
  auto out = at::empty({B, Nv + Nd, D}, x.options().dtype(out_type));  // written once, in the promoted dtype
  C10_CUDA_CHECK(vmae2::launch_decoder_input(dtype_of(x, "x_vis"), x.const_data_ptr(), vis.const_data_ptr<int64_t>(),
                                             dec.const_data_ptr<int64_t>(), token.const_data_ptr<float>(),
                                             dtype_of(pos, "pos"), pos.const_data_ptr(), dtype_of(out, "the output"),
                                             out.mutable_data_ptr(), B, Nv, Nd, D, stream()));
  return out;
}

at::Tensor mask_token_grad(const at::Tensor& grad_in, int64_t num_visible) {
  TORCH_CHECK(grad_in.dim() == 3 && grad_in.is_cuda(), "grad must be a CUDA [B, L, D] tensor, got ", grad_in.sizes());
  c10::cuda::CUDAGuard guard(grad_in.device());
  auto grad = grad_in.contiguous();
  const int64_t B = grad.size(0), L = grad.size(1), D = grad.size(2);
  TORCH_CHECK(0 <= num_visible && num_visible <= L, "num_visible ", num_visible, " is out of range [0, ", L, "]");
  auto partial = at::empty({vmae2::mask_token_grad_blocks(B * (L - num_visible)), D}, grad.options().dtype(at::kFloat));
  C10_CUDA_CHECK(vmae2::launch_mask_token_grad(dtype_of(grad, "grad"), grad.const_data_ptr(),
                                               partial.mutable_data_ptr<float>(), B, num_visible, L, D, stream()));
  return partial.sum(0);
}

at::Tensor running_cell_ids(const at::Tensor& phase_in, int64_t T, int64_t H, int64_t W, int64_t m) {
  TORCH_CHECK(phase_in.is_cuda(), "phase must be a CUDA tensor, got one on ", phase_in.device());
  vmae2::check_running_cell_args(phase_in, T, H, W, m);
  c10::cuda::CUDAGuard guard(phase_in.device());
  auto phase = phase_in.to(at::kLong).contiguous();
  const int64_t B = phase.size(0);
  auto out = at::empty({B, T * H * W * (4 - m) / 4}, phase.options());
  C10_CUDA_CHECK(vmae2::launch_running_cell_ids(phase.const_data_ptr<int64_t>(), out.mutable_data_ptr<int64_t>(), B,
                                                static_cast<int>(T), static_cast<int>(H), static_cast<int>(W),
                                                static_cast<int>(m), stream()));
  return out;
}

at::Tensor tube_ids(const at::Tensor& keys_in, int64_t num_frames, int64_t num_masked) {
  TORCH_CHECK(keys_in.dim() == 2 && keys_in.is_cuda(), "keys must be a CUDA [B, HW] tensor, got ", keys_in.sizes());
  const int64_t B = keys_in.size(0), HW = keys_in.size(1);
  TORCH_CHECK(0 <= num_masked && num_masked <= HW, "num_masked ", num_masked, " is out of range [0, ", HW, "]");
  c10::cuda::CUDAGuard guard(keys_in.device());
  auto keys = keys_in.to(at::kFloat).contiguous();
  auto out = at::empty({B, num_frames * (HW - num_masked)}, keys.options().dtype(at::kLong));
  C10_CUDA_CHECK(vmae2::launch_tube_ids(keys.const_data_ptr<float>(), out.mutable_data_ptr<int64_t>(), B,
                                        static_cast<int>(HW), static_cast<int>(num_frames),
                                        static_cast<int>(num_masked), stream()));
  return out;
}

// Shared by forward and backward: the launcher arguments (the caller sets the outputs and `backward`).
struct LossInputs {
  at::Tensor pred, video, ids, w;
  vmae2::ReconLossArgs args;
};

LossInputs loss_inputs(const at::Tensor& pred_in, const at::Tensor& video_in, const at::Tensor& ids_in,
                       const at::Tensor& w_in, int64_t patch, int64_t tub, int64_t target, at::ArrayRef<double> mean,
                       at::ArrayRef<double> std) {
  vmae2::check_loss_args(pred_in, video_in, ids_in, w_in, patch, tub);
  for (const auto* t : {&video_in, &ids_in, &w_in}) check_cuda(*t, pred_in, "recon_loss argument");
  TORCH_CHECK(mean.size() == 3 && std.size() == 3, "mean and std must have 3 values");
  // One token's target lives in shared memory: above 48 KB the launcher opts in, up to the device's opt-in limit.
  int device = 0, smem_limit = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const size_t smem = vmae2::recon_loss_smem_bytes(static_cast<int>(patch), static_cast<int>(tub));
  TORCH_CHECK(smem <= static_cast<size_t>(smem_limit), "recon_loss: tubelet_size * patch_size^2 = ",
              tub * patch * patch, " pixels per token need ", smem,
              " bytes of shared memory per block on the CUDA backend, above this GPU's ", smem_limit,
              "; use the 'triton' or 'torch' backend");
  LossInputs in;
  in.pred = pred_in.contiguous();
  in.video = video_in.scalar_type() == at::kDouble ? video_in.to(at::kFloat) : video_in;
  if (in.video.stride(4) != 1) in.video = in.video.contiguous();
  in.ids = ids_in.contiguous();
  in.w = w_in.to(at::kFloat).contiguous();
  auto& a = in.args;
  a.pred_dtype = dtype_of(in.pred, "pred");
  a.video_dtype = dtype_of(in.video, "video");
  a.pred = in.pred.const_data_ptr();
  a.video = in.video.const_data_ptr();
  a.ids = in.ids.const_data_ptr<int64_t>();
  a.weight = in.w.const_data_ptr<float>();
  a.scale = nullptr;
  a.per_token = nullptr;
  a.grad = nullptr;
  a.B = in.ids.size(0);
  a.Nd = in.ids.size(1);
  a.hp = static_cast<int>(in.video.size(3) / patch);
  a.wp = static_cast<int>(in.video.size(4) / patch);
  a.patch = static_cast<int>(patch);
  a.tub = static_cast<int>(tub);
  a.target = static_cast<int>(target);
  a.backward = false;
  a.stride_b = in.video.stride(0);
  a.stride_c = in.video.stride(1);
  a.stride_t = in.video.stride(2);
  a.stride_h = in.video.stride(3);
  for (int c = 0; c < 3; ++c) {
    a.mean[c] = static_cast<float>(mean[c]);
    a.std[c] = static_cast<float>(std[c]);
  }
  return in;
}

at::Tensor recon_loss(const at::Tensor& pred, const at::Tensor& video, const at::Tensor& ids, const at::Tensor& w,
                      int64_t patch, int64_t tub, int64_t target, at::ArrayRef<double> mean,
                      at::ArrayRef<double> std) {
  c10::cuda::CUDAGuard guard(pred.device());
  auto in = loss_inputs(pred, video, ids, w, patch, tub, target, mean, std);
  auto per_token = at::empty({in.args.B * in.args.Nd}, in.pred.options().dtype(at::kFloat));
  in.args.per_token = per_token.mutable_data_ptr<float>();
  C10_CUDA_CHECK(vmae2::launch_recon_loss(in.args, stream()));
  return per_token.sum() / in.w.sum();
}

at::Tensor recon_loss_backward(const at::Tensor& grad_out, const at::Tensor& pred, const at::Tensor& video,
                               const at::Tensor& ids, const at::Tensor& w, int64_t patch, int64_t tub,
                               int64_t target, at::ArrayRef<double> mean, at::ArrayRef<double> std) {
  c10::cuda::CUDAGuard guard(pred.device());
  auto in = loss_inputs(pred, video, ids, w, patch, tub, target, mean, std);
  // On the device, no host sync: grad_out * 2 / (F * sum(w)).
  auto scale = (grad_out.to(at::kFloat) * (2.0 / static_cast<double>(in.pred.size(2))) / in.w.sum())
                   .reshape({1})
                   .contiguous();
  auto grad = at::empty_like(in.pred);
  in.args.scale = scale.const_data_ptr<float>();
  in.args.grad = grad.mutable_data_ptr();
  in.args.backward = true;
  C10_CUDA_CHECK(vmae2::launch_recon_loss(in.args, stream()));
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(vmae2_native, CUDA, m) { VMAE2_NATIVE_OPS(VMAE2_IMPL) }
