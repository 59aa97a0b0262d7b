// Where the compiled ops meet Python: the schemas of the vmae2_native library (TORCH_LIBRARY, once) and the CPU
// registration of the kernels declared in vmae2_cpu.h (one source per op family: gather_cpu.cpp, decoder_cpu.cpp,
// masks_cpu.cpp, loss_cpu.cpp). cuda/vmae2_cuda_binding.cpp adds the CUDA kernels when built with CUDA.
#include <torch/library.h>

#include "vmae2_checks.h"
#include "vmae2_cpu.h"

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

using namespace vmae2::cpu;  // VMAE2_IMPL names each op's function unqualified

TORCH_LIBRARY_IMPL(vmae2_native, CPU, m) { VMAE2_NATIVE_OPS(VMAE2_IMPL) }
