"""Accelerator facts every layer needs: what counts as out-of-memory, how a retry gets the failed attempt's memory
back, and the deterministic mode (see ``docs/reproducibility.md``).

A leaf module: it imports nothing from the package.
"""

from __future__ import annotations

import contextlib
import gc
import os

import torch

# Allocation failures that CUDA libraries report as plain RuntimeErrors: a cuBLAS handle or workspace, a cuDNN
# workspace, or a kernel's own cudaMalloc. They mean the same as torch.OutOfMemoryError: a smaller batch may fit.
_OOM_MESSAGES = ("CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "CUDA error: out of memory",
                 "HIP error: out of memory")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure on the device (``torch.OutOfMemoryError`` or a cuBLAS/cuDNN
    ``*_ALLOC_FAILED`` runtime error), which a smaller batch can avoid."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in _OOM_MESSAGES)


def release_memory() -> None:
    """Collect what an out-of-memory failure left (cycles included) and hand cached CUDA blocks back to the driver.

    Call it *after* the ``except`` block has ended: until then the exception's traceback pins the failed frames,
    and so their activations, and nothing would be freed."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def use_deterministic(on: bool = True) -> None:
    """Bit-for-bit repeatable CUDA kernels where PyTorch has them, at some speed cost (``dpo-diff --deterministic``
    or ``DPO_DIFF_DETERMINISTIC=1``).

    Sets ``torch.use_deterministic_algorithms`` (an op without a deterministic kernel then raises instead of
    silently varying; upsampling's backward, used by the shortcut gradient's VAE decode, has none in some versions,
    hence ``warn_only``: a warning names it), disables TF32 for matmuls and convolutions, disables cuDNN
    benchmarking (its kernel choice depends on timing and memory) and sets ``CUBLAS_WORKSPACE_CONFIG`` (cuBLAS
    needs a fixed workspace to be deterministic; it takes effect for a process where CUDA is not yet initialised).
    What stays different on CUDA even so is listed in ``docs/reproducibility.md``."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False  # PyTorch's default either way
    torch.backends.cudnn.allow_tf32 = not on  # PyTorch's default: on (TF32 convolutions)


@contextlib.contextmanager
def deterministic_kernels():
    """:func:`use_deterministic` inside the block, every flag it touches restored afterwards (tests that compare
    devices: TF32 convolutions alone move a CUDA image by ~1e-3 from the CPU's)."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    use_deterministic(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = saved[2:]
