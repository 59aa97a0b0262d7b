// CPU kernels of the fused reconstruction loss and its gradient; CUDA twin: cuda/loss_cuda.cu.
// Reference: vmae2_kernels/loss/reference.py. Registered by vmae2_ops.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "vmae2_checks.h"
#include "vmae2_cpu.h"

namespace vmae2::cpu {

namespace {

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

}  // namespace

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

}  // namespace vmae2::cpu
