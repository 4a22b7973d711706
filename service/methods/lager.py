"""Learning LAGER layer weights from human scores.

For each labelled item we hold the [layers x labels] matrix of label logits (or
log-probabilities: per-layer constants cancel in the softmax). The weights are one
parameter per layer entry except the final normed one, softmax-normalised, starting
at zero (uniform). Loss: ``sigmoid(a)*CE(logits, human-1) + (1-sigmoid(a))*MSE(E, human)``,
Adam, lr 0.01, 2 epochs, batches of 8, as in the method's reference code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class LayerWeights:
    """Raw per-layer weights (softmax-normalised at use) and how they were fitted."""

    weights: list[float]
    layer_norm: bool
    model: str
    fit_ids: list[str] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def load(cls, path: Path) -> LayerWeights:
        data = json.loads(path.read_text())
        return cls(
            weights=[float(w) for w in data["weights"]],
            layer_norm=bool(data.get("layer_norm", False)),
            model=str(data.get("model", "")),
            fit_ids=[str(i) for i in data.get("fit_ids", [])],
            losses=[float(x) for x in data.get("losses", [])],
        )


def layer_loss(
    weights: torch.Tensor, alpha: torch.Tensor, logits: torch.Tensor, human: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """The fitting loss on ``logits`` [N, L, K] (final entry excluded) and human scores [N]."""
    import torch

    aggregated = torch.einsum("l,nlk->nk", torch.softmax(weights, dim=0), logits)
    targets = torch.argmin((human[:, None] - values[None, :]).abs(), dim=1)
    expected = (torch.softmax(aggregated, dim=-1) * values).sum(-1)
    ce = torch.nn.functional.cross_entropy(aggregated, targets)
    mse = torch.nn.functional.mse_loss(expected, human)
    gate = torch.sigmoid(alpha)
    return gate * ce + (1 - gate) * mse


def fit_layer_weights(
    layer_logits: Sequence[Sequence[Sequence[float]]],
    human: Sequence[float],
    values: Sequence[float],
    *,
    epochs: int = 2,
    lr: float = 0.01,
    batch_size: int = 8,
    seed: int = 0,
) -> tuple[list[float], list[float]]:
    """Fit weights; return (raw weights over all entries but the last, and the loss on the
    whole set before training and after each epoch)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    logits = torch.tensor(layer_logits, dtype=torch.float64)[:, :-1, :]
    target = torch.tensor(human, dtype=torch.float64)
    value_t = torch.tensor(values, dtype=torch.float64)
    weights = torch.zeros(logits.shape[1], dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([weights, alpha], lr=lr)
    with torch.no_grad():
        losses = [float(layer_loss(weights, alpha, logits, target, value_t))]
    for _ in range(epochs):
        order = torch.randperm(len(target), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = layer_loss(weights, alpha, logits[index], target[index], value_t)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            losses.append(float(layer_loss(weights, alpha, logits, target, value_t)))
    return weights.detach().tolist(), losses
