"""Which device the engines run on: whether a GPU is present, and the torch device a
setting names. Torch is imported only when asked, so that choosing an engine imports no
framework it does not use."""

from __future__ import annotations

from typing import Any


def gpu_present() -> bool:
    """Whether torch sees a CUDA device (False when torch is missing)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def torch_device(device: str) -> Any:
    """The ``torch.device`` a ``JUDGE_DEVICE`` setting names; ``auto``: the GPU where there is one."""
    import torch

    if device != "auto":
        return torch.device(device)
    return torch.device("cuda" if gpu_present() else "cpu")
