"""What a score request reads besides the final distribution, decided in one place: the
layers' label logits (LAGER's methods, ``return_layers``), and anything per layer at all
(those, the probe's hidden rows, ``hidden_layers``)."""

from __future__ import annotations

from collections.abc import Sequence


def reads_layer_logits(method: str, return_layers: bool) -> bool:
    """Whether the request needs every layer's label logits."""
    return method not in ("final", "probe") or return_layers


def reads_per_layer(method: str, return_layers: bool, hidden_layers: Sequence[int] | None = None) -> bool:
    """Whether the request reads anything per layer: label logits or hidden rows."""
    return reads_layer_logits(method, return_layers) or method == "probe" or bool(hidden_layers)
