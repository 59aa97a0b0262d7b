// CUDA kernels of the decoder input and its mask-token gradient and their host launchers (vmae2_cuda.h); CPU twin:
// ../decoder_cpu.cpp. Reference: vmae2_kernels/decoder/reference.py.
#include "vmae2_cuda_common.cuh"

namespace vmae2 {

// [x_vis + pos[vis_ids] | mask_token + pos[dec_ids]]: x in T, the table in P, each read in its own type; fp32 sums,
// one rounding to O.
template <typename T, typename P, typename O>
__global__ void decoder_input_kernel(const T* __restrict__ x, const int64_t* __restrict__ vis,
                                     const int64_t* __restrict__ dec, const float* __restrict__ token,
                                     const P* __restrict__ pos, O* __restrict__ out, int64_t Nv, int64_t Nd,
                                     int64_t D) {
  const int64_t L = Nv + Nd, r = blockIdx.x, b = r / L, i = r % L;
  const bool visible = i < Nv;
  const int64_t id = visible ? vis[b * Nv + i] : dec[b * Nd + (i - Nv)];
  for (int64_t c = threadIdx.x; c < D; c += blockDim.x) {
    const float base = visible ? to_f(x[(b * Nv + i) * D + c]) : token[c];
    out[r * D + c] = from_f<O>(base + to_f(pos[id * D + c]));
  }
}

// Column sums of the mask-token rows into P partial rows, summed by the host op. 1-D grid of P x col_blocks blocks:
// block i sums rows_per_block rows of partial row i / col_blocks, columns of block i % col_blocks.
template <typename T>
__global__ void mask_token_grad_kernel(const T* __restrict__ grad, float* __restrict__ partial, int64_t Nv,
                                       int64_t L, int64_t D, int64_t total_rows, int64_t rows_per_block,
                                       int64_t col_blocks) {
  const int64_t part = blockIdx.x / col_blocks, c = (blockIdx.x % col_blocks) * blockDim.x + threadIdx.x;
  if (c >= D) return;
  float acc = 0.f;
  const int64_t Nd = L - Nv, first = part * rows_per_block;
  for (int64_t j = first; j < first + rows_per_block && j < total_rows; ++j) {
    acc += to_f(grad[((j / Nd) * L + Nv + j % Nd) * D + c]);
  }
  partial[part * D + c] = acc;
}

// -- host launchers (vmae2_cuda.h) -----------------------------------------------------------------------------

namespace {

constexpr int64_t kMaskGradRows = 64;  // rows summed per block of the mask-token gradient

}  // namespace

cudaError_t launch_decoder_input(DType x_dtype, const void* x, const int64_t* vis, const int64_t* dec,
                                 const float* token, DType pos_dtype, const void* pos, DType out_dtype, void* out,
                                 int64_t B, int64_t Nv, int64_t Nd, int64_t D, cudaStream_t stream) {
  if (B * (Nv + Nd) == 0 || D == 0) return cudaSuccess;
  // The output is fp32, or x's type when x and the table share it (the promoted type of the three inputs).
  if (out_dtype != DType::kFloat32 && (out_dtype != x_dtype || out_dtype != pos_dtype)) return cudaErrorInvalidValue;
  by_dtype(x_dtype, [&](auto x_tag) {
    using T = typename decltype(x_tag)::type;
    by_dtype(pos_dtype, [&](auto pos_tag) {
      using P = typename decltype(pos_tag)::type;
      const auto* xp = static_cast<const T*>(x);
      const auto* pp = static_cast<const P*>(pos);
      const int64_t rows = B * (Nv + Nd);  // one block per row, on grid axis 0
      if (out_dtype == DType::kFloat32) {
        decoder_input_kernel<T, P, float><<<rows, threads_for(D), 0, stream>>>(xp, vis, dec, token, pp,
                                                                               static_cast<float*>(out), Nv, Nd, D);
      } else if constexpr (std::is_same_v<T, P>) {
        decoder_input_kernel<T, P, T><<<rows, threads_for(D), 0, stream>>>(xp, vis, dec, token, pp,
                                                                           static_cast<T*>(out), Nv, Nd, D);
      }
    });
  });
  return cudaGetLastError();
}

int64_t mask_token_grad_blocks(int64_t rows) { return std::max<int64_t>(1, (rows + kMaskGradRows - 1) / kMaskGradRows); }

Launch1D mask_token_grad_launch(int64_t rows, int64_t D) {
  const int threads = threads_for(D, 128);
  return {mask_token_grad_blocks(rows) * ((D + threads - 1) / threads), threads};
}

cudaError_t launch_mask_token_grad(DType dtype, const void* grad, float* partial, int64_t B, int64_t Nv, int64_t L,
                                   int64_t D, cudaStream_t stream) {
  const int64_t rows = B * (L - Nv);
  if (D == 0) return cudaSuccess;
  const Launch1D launch = mask_token_grad_launch(rows, D);
  if (launch.blocks > INT32_MAX) return cudaErrorInvalidConfiguration;  // past grid axis 0's 2^31 - 1 blocks
  const int64_t col_blocks = (D + launch.threads - 1) / launch.threads;
  by_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    mask_token_grad_kernel<T><<<static_cast<unsigned>(launch.blocks), launch.threads, 0, stream>>>(
        static_cast<const T*>(grad), partial, Nv, L, D, rows, kMaskGradRows, col_blocks);
  });
  return cudaGetLastError();
}

}  // namespace vmae2
