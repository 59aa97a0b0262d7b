// CPU kernels of the mask ids (running_cell_ids, tube_ids); CUDA twin: cuda/masks_cuda.cu.
// Reference: vmae2_kernels/masks/reference.py. Registered by vmae2_ops.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "vmae2_checks.h"
#include "vmae2_cpu.h"

namespace vmae2::cpu {

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

}  // namespace vmae2::cpu
