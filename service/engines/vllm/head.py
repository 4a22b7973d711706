"""The LM head of a model inside vLLM's worker, restricted to label rows.

The head is the module and bias the model itself passes to its ``LogitsProcessor`` (seen
by a hook during one ``compute_logits`` call), followed by the family's logit transform
from ``heads``. ``LabelRows.prove`` checks the label rows against the model's own
``compute_logits`` on hidden states whose logits reach magnitudes from 0.5 to 2000, so
vLLM's head (its softcapping and scale included) is known to equal the family's own.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from service.engines.heads import LogitTransform, head_tolerance, transform_for


class LayerCaptureUnavailable(RuntimeError):
    """The model lacks something per-layer capture needs; the message says what."""


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


class LabelRows:
    """The model's own head, as its ``compute_logits`` applies it, restricted to label rows."""

    def __init__(self, model: Any, config: Any, hidden_size: int, dtype: torch.dtype, device: torch.device) -> None:
        processor = getattr(model, "logits_processor", None)
        if processor is None or getattr(processor, "logits_as_input", False):
            raise LayerCaptureUnavailable("no logits processor applying an LM head")
        seen: dict[str, Any] = {}

        def grab(module: Any, args: tuple, kwargs: dict) -> None:
            seen["head"] = args[0] if args else kwargs["lm_head"]
            seen["bias"] = args[2] if len(args) > 2 else kwargs.get("embedding_bias")

        handle = processor.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            probe = torch.zeros((1, hidden_size), dtype=dtype, device=device)
            model.compute_logits(probe)
        finally:
            handle.remove()
        head: Any = seen.get("head")
        if not isinstance(getattr(head, "weight", None), torch.Tensor):
            raise LayerCaptureUnavailable("no LM-head weight passed to the logits processor")
        shard = getattr(head, "shard_indices", None)
        self.vocab_start = int(shard.org_vocab_start_index) if shard is not None else 0
        self.vocab_end = int(shard.org_vocab_end_index) if shard is not None else int(head.weight.shape[0])
        self.weight: torch.Tensor = head.weight
        bias = seen.get("bias")
        self.bias = bias if isinstance(bias, torch.Tensor) else None
        # The transformers family's transform: vLLM's head is proven to apply the same one.
        self.transform: LogitTransform = transform_for(config)

    def rows(self, label_ids: list[int], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's head rows for the labels; zero rows for labels another rank holds."""
        weight = torch.zeros((len(label_ids), self.weight.shape[1]), dtype=dtype, device=self.weight.device)
        bias = None if self.bias is None else torch.zeros(len(label_ids), dtype=dtype, device=weight.device)
        for i, token in enumerate(label_ids):
            if self.vocab_start <= token < self.vocab_end:
                weight[i] = self.weight[token - self.vocab_start].to(dtype)
                if bias is not None and self.bias is not None:
                    bias[i] = self.bias[token - self.vocab_start].to(dtype)
        return weight, bias

    def label_logits(self, hidden: torch.Tensor, label_ids: list[int], dtype: torch.dtype) -> torch.Tensor:
        weight, bias = self.rows(label_ids, dtype)
        return self.transform(torch.nn.functional.linear(hidden.to(dtype), weight, bias))

    @torch.inference_mode()
    def prove(self, model: Any, dtype: torch.dtype) -> str | None:
        """Compare with the model's own ``compute_logits``; a message when they differ.

        With tensor parallelism only the rank that receives the gathered logits compares,
        on the labels it holds (the other ranks apply the same code to their slices).
        """
        generator = torch.Generator().manual_seed(0)
        labels = list(range(self.vocab_start, self.vocab_end, max(1, (self.vocab_end - self.vocab_start) // 64)))
        rows = torch.randn((8, self.weight.shape[1]), generator=generator, dtype=torch.float64)
        raw = torch.nn.functional.linear(rows.to(self.weight.device), self.rows(labels, torch.float64)[0])
        targets = torch.logspace(math.log10(0.5), math.log10(2000.0), 8, dtype=torch.float64, device=raw.device)
        rows = (rows.to(raw.device) * (targets / raw.abs().amax(dim=-1).clamp(min=1e-12)).unsqueeze(-1)).to(dtype)
        theirs = model.compute_logits(rows)
        if theirs is None:
            return None
        theirs = theirs[:, labels].to(torch.float64)
        ours = self.label_logits(rows, labels, torch.float64)
        scale = ours.abs().amax(dim=-1, keepdim=True).clamp(min=1.0)
        error = float(((theirs - ours).abs() / scale).max())
        if error > head_tolerance(dtype):
            return f"vLLM's logits differ from the family's head ({self.transform}) by {error:.3g} (relative)"
        return None
