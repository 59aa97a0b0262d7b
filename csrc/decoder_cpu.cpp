// CPU kernels of the decoder input and its mask-token gradient; CUDA twin: cuda/decoder_cuda.cu.
// Reference: vmae2_kernels/decoder/reference.py. Registered by vmae2_ops.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "vmae2_checks.h"
#include "vmae2_cpu.h"

namespace vmae2::cpu {

// [x_vis + pos[vis_ids] | mask_token + pos[dec_ids]] in the promoted dtype, fp32 sums, one rounding.
at::Tensor decoder_input(const at::Tensor& x_in, const at::Tensor& vis_in, const at::Tensor& dec_in,
                         const at::Tensor& token_in, const at::Tensor& pos_in) {
  const auto out_type = check_decoder_input(x_in, vis_in, dec_in, token_in, pos_in);
  auto x = x_in.to(at::kFloat).contiguous();
  auto token = token_in.to(at::kFloat).contiguous().view({-1});
  auto pos = pos_in.to(at::kFloat).contiguous();
  auto vis = vis_in.contiguous();
  auto dec = dec_in.contiguous();
  const int64_t B = x.size(0), Nv = x.size(1), D = x.size(2), Nd = dec.size(1), L = Nv + Nd, N = pos.size(0);
  auto out = at::empty({B, L, D}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* tp = token.data_ptr<float>();
  const float* pp = pos.data_ptr<float>();
  const int64_t* vp = vis.data_ptr<int64_t>();
  const int64_t* dp = dec.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, B * L, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / L, i = r % L;
      const bool visible = i < Nv;
      const int64_t id = visible ? vp[b * Nv + i] : dp[b * Nd + (i - Nv)];
      TORCH_CHECK(id >= 0 && id < N, "id ", id, " is out of range [0, ", N, ")");
      const float* base = visible ? xp + (b * Nv + i) * D : tp;
      const float* prow = pp + id * D;
      float* dst = op + r * D;
      for (int64_t c = 0; c < D; ++c) dst[c] = base[c] + prow[c];
    }
  });
  return out.to(out_type);
}

// grad[:, nv:].sum((0, 1)) in fp32: [B, L, D] -> [D].
at::Tensor mask_token_grad(const at::Tensor& grad_in, int64_t num_visible) {
  auto grad = grad_in.to(at::kFloat).contiguous();
  const int64_t B = grad.size(0), L = grad.size(1), D = grad.size(2);
  auto out = at::zeros({D}, grad.options());
  const float* gp = grad.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, D, 64, [&](int64_t begin, int64_t end) {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = num_visible; i < L; ++i) {
        const float* row = gp + (b * L + i) * D;
        for (int64_t c = begin; c < end; ++c) op[c] += row[c];
      }
  });
  return out;
}

}  // namespace vmae2::cpu
