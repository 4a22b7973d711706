"""The scoring methods, in one table: what each reads out of the model and how it turns
that read-out into a label distribution.

- ``final``: the model's own next-token log-probabilities of the labels;
- ``lager``: the mean of every layer's label logits, raw or through the final norm as the
  caller chooses;
- ``lager_weighted``: the layers' label logits under fitted weights, in the variant (raw or
  final-normed) the weights were fitted on, whatever the caller chose for ``lager``;
- ``probe``: a fitted linear probe on the hidden rows of its layers.

A ``Readout`` is what one prompt gave, however it was collected: serving builds it from an
engine result (``Readout.of``), offline evaluation from the scores it collected; both form
every method's distribution here, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from service.core.tasks import LabelScores
from service.methods import scoring
from service.methods.lager import LayerWeights
from service.methods.probe import Probe

LayerRows = Sequence[Sequence[float]]
Asset = Literal["layer_weights", "probe"]


@dataclass(frozen=True)
class Readout:
    """What the judge read for one prompt: the labels' final log-probabilities, every
    layer's label logits in both variants (None when not read), and hidden rows by
    hidden-state entry (0 = embeddings)."""

    final: Sequence[float]
    layers: LayerRows | None = None  # raw: no final norm on the intermediate layers
    layers_normed: LayerRows | None = None  # every layer but the last through the final norm
    hidden: Mapping[int, Sequence[float]] = field(default_factory=dict)

    @classmethod
    def of(cls, result: LabelScores, hidden_layers: Sequence[int]) -> Readout:
        """An engine's result for a task that asked for ``hidden_layers`` (in that order)."""
        hidden = dict(zip(hidden_layers, result.hidden, strict=True)) if result.hidden is not None else {}
        return cls(result.logprobs, result.layer_logits, result.layer_logits_normed, hidden)

    def layer_logits(self, normed: bool) -> LayerRows | None:
        """The layers' label logits in one variant: through the final norm or raw."""
        return self.layers_normed if normed else self.layers


@dataclass(frozen=True)
class Fitted:
    """The fitted assets a method may read with."""

    layer_weights: LayerWeights | None = None
    probe: Probe | None = None

    def has(self, asset: Asset) -> bool:
        return (self.layer_weights if asset == "layer_weights" else self.probe) is not None


NOTHING_FITTED = Fitted()


@dataclass(frozen=True)
class Needs:
    """What a method reads besides the final log-probabilities, and the asset it needs."""

    layer_logits: bool = False  # every layer's label logits
    hidden: bool = False  # the hidden rows of its probe's layers
    asset: Asset | None = None


# (read-out, labels, label values, fitted assets, LAGER's layer variant) -> distribution.
Form = Callable[[Readout, Sequence[str], Sequence[float] | None, Fitted, bool], scoring.Distribution]


@dataclass(frozen=True)
class Method:
    """One row of the table: a method, what it needs, and how it forms its distribution."""

    name: str
    needs: Needs
    form: Form

    def distribution(
        self,
        readout: Readout,
        labels: Sequence[str],
        values: Sequence[float] | None,
        fitted: Fitted = NOTHING_FITTED,
        layer_norm: bool = False,
    ) -> scoring.Distribution:
        """This method's label distribution of ``readout``; ``layer_norm``: whether ``lager``
        reads the final-normed layers."""
        return self.form(readout, labels, values, fitted, layer_norm)

    def hidden_layers(self, fitted: Fitted) -> tuple[int, ...]:
        """The hidden-state entries this method reads: its probe's layers, if it has one."""
        if not self.needs.hidden or fitted.probe is None:
            return ()
        return tuple(fitted.probe.layers)


def _layers(readout: Readout, normed: bool) -> LayerRows:
    rows = readout.layer_logits(normed)
    assert rows is not None, "the layers' label logits were not read"
    return rows


def _final(
    r: Readout, labels: Sequence[str], values: Sequence[float] | None, fitted: Fitted, layer_norm: bool
) -> scoring.Distribution:
    return scoring.from_logprobs(labels, r.final, values)


def _lager(
    r: Readout, labels: Sequence[str], values: Sequence[float] | None, fitted: Fitted, layer_norm: bool
) -> scoring.Distribution:
    return scoring.distribution(labels, scoring.lager_logits(_layers(r, layer_norm)), values)


def _lager_weighted(
    r: Readout, labels: Sequence[str], values: Sequence[float] | None, fitted: Fitted, layer_norm: bool
) -> scoring.Distribution:
    weights = fitted.layer_weights
    assert weights is not None, "lager_weighted needs layer weights"
    # Weights apply to the layer variant they were fitted on, not the one asked of lager.
    logits = scoring.lager_logits(_layers(r, weights.layer_norm), weights.weights)
    return scoring.distribution(labels, logits, values)


def _probe(
    r: Readout, labels: Sequence[str], values: Sequence[float] | None, fitted: Fitted, layer_norm: bool
) -> scoring.Distribution:
    probe = fitted.probe
    assert probe is not None, "the probe method needs a probe"
    return scoring.distribution(labels, probe.logits([r.hidden[layer] for layer in probe.layers]), values)


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("final", Needs(), _final),
        Method("lager", Needs(layer_logits=True), _lager),
        Method("lager_weighted", Needs(layer_logits=True, asset="layer_weights"), _lager_weighted),
        Method("probe", Needs(hidden=True, asset="probe"), _probe),
    )
}
