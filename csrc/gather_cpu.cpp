// CPU kernels of the gathers (token_gather, token_scatter, tubelet_gather); CUDA twin: cuda/gather_cuda.cu.
// Reference: vmae2_kernels/gather/reference.py. Registered by vmae2_ops.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "vmae2_checks.h"
#include "vmae2_cpu.h"

namespace vmae2::cpu {

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

}  // namespace vmae2::cpu
