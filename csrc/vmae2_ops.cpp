// Native CPU implementations of the vmae2_kernels ops, registered as torch.ops.vmae2_native.*. This file also
// defines every schema (TORCH_LIBRARY, once); cuda/vmae2_cuda_binding.cpp adds the CUDA kernels when built with CUDA.
//
// Conventions (as vmae2_kernels/reference.py): tokens [B, N, C] in (t, h, w) order; ids int64 [B, K], unique per row,
// any order; arithmetic in fp32 (one rounding to the output dtype); fp32/bf16/fp16 inputs.
// Parallel loops use at::parallel_for (OpenMP pragmas do not compile inside AT_DISPATCH lambdas).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "vmae2_checks.h"

namespace {

using vmae2::check_decoder_input;
using vmae2::check_ids;
using vmae2::check_loss_args;
using vmae2::check_tubelet_args;

// out[b, k] = x[b, ids[b, k]] (+ pos[ids[b, k]] rounded to x's dtype), the add in fp32.
at::Tensor token_gather(const at::Tensor& x_in, const at::Tensor& ids_in, const c10::optional<at::Tensor>& pos_in) {
  TORCH_CHECK(x_in.dim() == 3, "x must be [B, N, C], got ", x_in.sizes());
  check_ids(ids_in, x_in.size(0), "ids");
  auto x = x_in.contiguous();
  auto ids = ids_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2), K = ids.size(1);
  auto out = at::empty({B, K, C}, x.options());
  at::Tensor pos;
  if (pos_in.has_value()) pos = pos_in->to(x.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "token_gather", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* pp = pos.defined() ? pos.data_ptr<scalar_t>() : nullptr;
    const int64_t* ip = ids.data_ptr<int64_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * K, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / K, token = ip[r];
        TORCH_CHECK(token >= 0 && token < N, "id ", token, " is out of range [0, ", N, ")");
        const scalar_t* src = xp + (b * N + token) * C;
        scalar_t* dst = op + r * C;
        if (pp == nullptr) {
          std::copy(src, src + C, dst);
        } else {
          const scalar_t* prow = pp + token * C;
          for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<scalar_t>(float(src[c]) + float(prow[c]));
        }
      }
    });
  });
  return out;
}

// Adjoint of token_gather: zeros [B, N, C] with out[b, ids[b, k]] += src[b, k] (one sample per task).
at::Tensor token_scatter(const at::Tensor& src_in, const at::Tensor& ids_in, int64_t num_tokens) {
  TORCH_CHECK(src_in.dim() == 3, "src must be [B, K, C], got ", src_in.sizes());
  check_ids(ids_in, src_in.size(0), "ids");
  auto src = src_in.contiguous();
  auto ids = ids_in.contiguous();
  const int64_t B = src.size(0), K = src.size(1), C = src.size(2), N = num_tokens;
  auto out = at::zeros({B, N, C}, src.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "token_scatter", [&] {
    const scalar_t* sp = src.data_ptr<scalar_t>();
    const int64_t* ip = ids.data_ptr<int64_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t k = 0; k < K; ++k) {
          const int64_t token = ip[b * K + k];
          TORCH_CHECK(token >= 0 && token < N, "id ", token, " is out of range [0, ", N, ")");
          scalar_t* dst = op + (b * N + token) * C;
          const scalar_t* s = sp + (b * K + k) * C;
          for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<scalar_t>(float(dst[c]) + float(s[c]));
        }
      }
    });
  });
  return out;
}

// out[b, k] = the pixels of tubelet ids[b, k] in (c, p0, p1, p2) order: 3 * tub * patch rows of `patch` contiguous
// pixels (unit stride along W), each copied as one run.
at::Tensor tubelet_gather(const at::Tensor& video_in, const at::Tensor& ids_in, int64_t patch, int64_t tub) {
  check_tubelet_args(video_in, ids_in, patch, tub);
  auto video = video_in.stride(4) == 1 ? video_in : video_in.contiguous();
  auto ids = ids_in.contiguous();
  const int64_t B = video.size(0), K = ids.size(1), hp = video.size(3) / patch, wp = video.size(4) / patch;
  const int64_t N = video.size(2) / tub * hp * wp, F = 3 * tub * patch * patch;
  const auto st = video.strides();
  auto out = at::empty({B, K, F}, video.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, video.scalar_type(), "tubelet_gather", [&] {
    const scalar_t* vp = video.data_ptr<scalar_t>();
    const int64_t* ip = ids.data_ptr<int64_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * K, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t token = ip[r];
        TORCH_CHECK(token >= 0 && token < N, "id ", token, " is out of range [0, ", N, ")");
        const int64_t t = token / (hp * wp), hh = (token / wp) % hp, ww = token % wp;
        const scalar_t* base = vp + (r / K) * st[0] + t * tub * st[2] + hh * patch * st[3] + ww * patch;
        scalar_t* dst = op + r * F;
        for (int64_t c = 0; c < 3; ++c)
          for (int64_t p0 = 0; p0 < tub; ++p0)
            for (int64_t p1 = 0; p1 < patch; ++p1, dst += patch) {
              const scalar_t* src = base + c * st[1] + p0 * st[2] + p1 * st[3];
              std::copy(src, src + patch, dst);
            }
      }
    });
  });
  return out;
}

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

// Decoder-visible ids of running-cell masks: token (t, h, w) is masked iff (2(h%2) + w%2 + p + t + 1) % 4 < m, p the
// phase modulo 4 (in 0..3 for any phase, negative included).
at::Tensor running_cell_ids(const at::Tensor& phase_in, int64_t T, int64_t H, int64_t W, int64_t m) {
  vmae2::check_running_cell_args(phase_in, T, H, W, m);
  auto phase = phase_in.to(at::kLong).contiguous();
  const int64_t B = phase.size(0), kept = T * H * W * (4 - m) / 4;
  auto out = at::empty({B, kept}, phase.options());
  const int64_t* pp = phase.data_ptr<int64_t>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t p = ((pp[b] % 4) + 4) % 4;
      int64_t k = 0;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w)
            if ((2 * (h % 2) + (w % 2) + p + t + 1) % 4 >= m) op[b * kept + k++] = (t * H + h) * W + w;
    }
  });
  return out;
}

// Encoder-visible ids of tube masks: per sample the M smallest keys (ties: lower index) are masked in every frame.
at::Tensor tube_ids(const at::Tensor& keys_in, int64_t num_frames, int64_t num_masked) {
  auto keys = keys_in.to(at::kFloat).contiguous();
  const int64_t B = keys.size(0), HW = keys.size(1), kept = HW - num_masked;
  auto out = at::empty({B, num_frames * kept}, keys.options().dtype(at::kLong));
  const float* kp = keys.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> order(HW);
    for (int64_t b = begin; b < end; ++b) {
      const float* row = kp + b * HW;
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int64_t i, int64_t j) { return row[i] < row[j]; });
      std::sort(order.begin() + num_masked, order.end());
      for (int64_t t = 0; t < num_frames; ++t)
        for (int64_t k = 0; k < kept; ++k) op[(b * num_frames + t) * kept + k] = t * HW + order[num_masked + k];
    }
  });
  return out;
}

// (x - mean) / (std + 1e-6) over x[0..n) (VideoMAE), or (x - mean) / sqrt(var + 1e-6) with `eps_in_var` (MAE).
inline void normalize_run(float* x, int64_t n, bool eps_in_var) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  const float mu = sum / n;
  float sq = 0.f;
#pragma omp simd reduction(+ : sq)
  for (int64_t i = 0; i < n; ++i) sq += (x[i] - mu) * (x[i] - mu);
  const float var = sq / (n - 1);
  const float inv = eps_in_var ? 1.f / std::sqrt(var + 1e-6f) : 1.f / (std::sqrt(var) + 1e-6f);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = (x[i] - mu) * inv;
}

// One token's target in pred's row order (p0 p1 p2 c: channel fastest) into `tgt[3P]`; `x[3P]` is scratch.
// Each patch row is `patch` contiguous pixels (`sx` apart). target: 0 the pixels, 1 VideoMAE (per channel, eps added
// to the std), 2 MAE (per patch over pixels and channels, eps added to the variance); unbiased statistics, two
// passes, as the reference.
template <typename vid_t>
void token_target(const vid_t* vp, const at::IntArrayRef& st, int64_t b, int64_t n, int64_t hp, int64_t wp,
                  int64_t patch, int64_t tub, int64_t target, const std::vector<double>& mean,
                  const std::vector<double>& std, float* x, float* tgt) {
  const int64_t t = n / (hp * wp), hh = (n / wp) % hp, ww = n % wp, P = tub * patch * patch, sx = st[4];
  for (int64_t c = 0; c < 3; ++c) {
    const float s = static_cast<float>(std[c]), m = static_cast<float>(mean[c]);
    const vid_t* base = vp + b * st[0] + c * st[1] + t * tub * st[2] + hh * patch * st[3] + ww * patch * sx;
    float* xc = x + c * P;
    for (int64_t dt = 0; dt < tub; ++dt)
      for (int64_t y = 0; y < patch; ++y, xc += patch) {
        const vid_t* row = base + dt * st[2] + y * st[3];
        if (sx == 1) {
#pragma omp simd
          for (int64_t j = 0; j < patch; ++j) xc[j] = float(row[j]) * s + m;
        } else {
          for (int64_t j = 0; j < patch; ++j) xc[j] = float(row[j * sx]) * s + m;
        }
      }
    if (target == 1) normalize_run(x + c * P, P, false);
  }
  if (target == 2) normalize_run(x, 3 * P, true);
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t i = 0; i < P; ++i) tgt[i * 3 + c] = x[c * P + i];
}

// Shared loop of the fused loss: per token r, hand (r, pred row in fp32, target row) to `fn`; rows are F = 3P long.
template <typename Fn>
void for_each_token(const at::Tensor& pred, const at::Tensor& video, const at::Tensor& ids, int64_t patch,
                    int64_t tub, int64_t target, const std::vector<double>& mean, const std::vector<double>& std,
                    Fn fn) {
  const int64_t B = ids.size(0), Nd = ids.size(1), F = pred.size(2);
  const int64_t hp = video.size(3) / patch, wp = video.size(4) / patch;
  const int64_t* ip = ids.data_ptr<int64_t>();
  const auto st = video.strides();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, video.scalar_type(), "recon_loss", [&] {
    using vid_t = scalar_t;
    const vid_t* vp = video.data_ptr<vid_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "recon_loss_pred", [&] {
      const scalar_t* pp = pred.data_ptr<scalar_t>();
      at::parallel_for(0, B * Nd, 8, [&](int64_t begin, int64_t end) {
        std::vector<float> scratch(3 * F);
        float *x = scratch.data(), *tgt = x + F, *row = tgt + F;
        for (int64_t r = begin; r < end; ++r) {
          token_target(vp, st, r / Nd, ip[r], hp, wp, patch, tub, target, mean, std, x, tgt);
          for (int64_t j = 0; j < F; ++j) row[j] = float(pp[r * F + j]);
          fn(r, row, tgt, F);
        }
      });
    });
  });
}

// sum(w * mean_P((pred - target)^2)) / sum(w), fp32 (per-token partials, reduced in a fixed order).
at::Tensor recon_loss(const at::Tensor& pred_in, const at::Tensor& video, const at::Tensor& ids_in,
                      const at::Tensor& w_in, int64_t patch, int64_t tub, int64_t target, at::ArrayRef<double> mean,
                      at::ArrayRef<double> std) {
  check_loss_args(pred_in, video, ids_in, w_in, patch, tub);
  auto pred = pred_in.contiguous();
  auto ids = ids_in.contiguous();
  auto w = w_in.to(at::kFloat).contiguous();
  auto per_token = at::empty({ids.size(0) * ids.size(1)}, w.options());
  const float* wp = w.data_ptr<float>();
  float* tp = per_token.data_ptr<float>();
  for_each_token(pred, video, ids, patch, tub, target, mean.vec(), std.vec(),
                 [&](int64_t r, const float* row, const float* tgt, int64_t F) {
    float sq = 0.f;
#pragma omp simd reduction(+ : sq)
    for (int64_t j = 0; j < F; ++j) {
      const float d = row[j] - tgt[j];
      sq += d * d;
    }
    tp[r] = sq / F * wp[r];
  });
  return per_token.sum() / w.sum();
}

// d loss / d pred = 2 (pred - target) w / (F sum(w)) * grad_out, in pred's dtype.
at::Tensor recon_loss_backward(const at::Tensor& grad_out, const at::Tensor& pred_in, const at::Tensor& video,
                               const at::Tensor& ids_in, const at::Tensor& w_in, int64_t patch, int64_t tub,
                               int64_t target, at::ArrayRef<double> mean, at::ArrayRef<double> std) {
  check_loss_args(pred_in, video, ids_in, w_in, patch, tub);
  auto pred = pred_in.contiguous();
  auto ids = ids_in.contiguous();
  auto w = w_in.to(at::kFloat).contiguous();
  const float scale = grad_out.item<float>() * 2.f / (pred.size(2) * w.sum().item<float>());
  auto grad = at::empty_like(pred);
  const float* wp = w.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "recon_loss_backward", [&] {
    scalar_t* gp = grad.data_ptr<scalar_t>();
    for_each_token(pred, video, ids, patch, tub, target, mean.vec(), std.vec(),
                   [&](int64_t r, const float* row, const float* tgt, int64_t F) {
      const float k = scale * wp[r];
      for (int64_t j = 0; j < F; ++j) gp[r * F + j] = static_cast<scalar_t>((row[j] - tgt[j]) * k);
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY(vmae2_native, m) {
  m.def("token_gather(Tensor x, Tensor ids, Tensor? pos) -> Tensor");
  m.def("token_scatter(Tensor src, Tensor ids, int num_tokens) -> Tensor");
  m.def("tubelet_gather(Tensor video, Tensor ids, int patch_size, int tubelet_size) -> Tensor");
  m.def("decoder_input(Tensor x_vis, Tensor vis_ids, Tensor dec_ids, Tensor mask_token, Tensor pos) -> Tensor");
  m.def("mask_token_grad(Tensor grad, int num_visible) -> Tensor");
  m.def("running_cell_ids(Tensor phase, int T, int H, int W, int masked_per_cell) -> Tensor");
  m.def("tube_ids(Tensor keys, int num_frames, int num_masked) -> Tensor");
  m.def("recon_loss(Tensor pred, Tensor video, Tensor dec_ids, Tensor weights, int patch_size, int tubelet_size, "
        "int target, float[] mean, float[] std) -> Tensor");
  m.def("recon_loss_backward(Tensor grad_out, Tensor pred, Tensor video, Tensor dec_ids, Tensor weights, "
        "int patch_size, int tubelet_size, int target, float[] mean, float[] std) -> Tensor");
}

TORCH_LIBRARY_IMPL(vmae2_native, CPU, m) { VMAE2_NATIVE_OPS(VMAE2_IMPL) }
