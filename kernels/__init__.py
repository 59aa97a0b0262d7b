"""vmae2_kernels: token-level ops of the VideoMAE V2 dual-masking data path.

Importable with no GPU, no Triton and no compiled extension. Today every op runs its plain-PyTorch
reference (:mod:`vmae2_kernels.reference`), which is also the specification that the fused
Triton/native kernels are tested against.
"""
from vmae2_kernels.reference import decoder_input, token_gather

__version__ = "0.1.0"
__all__ = ["token_gather", "decoder_input", "__version__"]
