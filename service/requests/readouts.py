"""What a score request reads besides the final distribution: the layers' label logits
(what its method needs, by the method table ``service.methods.readout``, or
``return_layers``), and anything per layer at all (those, its method's hidden rows,
``hidden_layers``); and whether this judge can serve it (``ReadoutSupport``: the engine's
per-layer capture, the layer weights, the probe)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.core.errors import ErrorKind, JudgeError
from service.engines.base import EngineCapabilities
from service.methods.lager import LayerWeights
from service.methods.probe import Probe
from service.methods.readout import METHODS, Asset, Fitted

# What a method's missing asset is, and the setting that gives a server one.
_MISSING: dict[Asset, str] = {
    "layer_weights": "layer weights; the server has none (JUDGE_LAYER_WEIGHTS_FILE)",
    "probe": "a probe; the server has none (JUDGE_PROBE_FILE)",
}


def reads_layer_logits(method: str, return_layers: bool) -> bool:
    """Whether the request needs every layer's label logits."""
    return METHODS[method].needs.layer_logits or return_layers


def reads_per_layer(method: str, return_layers: bool, hidden_layers: Sequence[int] | None = None) -> bool:
    """Whether the request reads anything per layer: label logits or hidden rows."""
    return reads_layer_logits(method, return_layers) or METHODS[method].needs.hidden or bool(hidden_layers)


@dataclass(frozen=True)
class ReadoutSupport:
    """What this judge can read out: per-layer capture (the engine's, and why not), the
    model's hidden-state entries (0..``num_layers``), the layer weights and the probe."""

    engine_kind: str
    supports_layers: bool
    layers_unavailable: str | None = None
    num_layers: int = 0
    layer_weights: LayerWeights | None = None
    probe: Probe | None = None

    @classmethod
    def of(
        cls, engine_kind: str, engine: EngineCapabilities, layer_weights: LayerWeights | None, probe: Probe | None
    ) -> ReadoutSupport:
        return cls(
            engine_kind, engine.supports_layers, engine.layers_unavailable, engine.num_layers, layer_weights, probe
        )

    @property
    def fitted(self) -> Fitted:
        return Fitted(self.layer_weights, self.probe)

    def _unavailable(self) -> str:
        return f" ({self.layers_unavailable})" if self.layers_unavailable else ""

    def wants_layers(self, method: str, return_layers: bool) -> bool:
        """Whether a score request needs per-layer logits; refuses what this judge cannot serve."""
        asset = METHODS[method].needs.asset
        if asset is not None and not self.fitted.has(asset):
            raise JudgeError(ErrorKind.INVALID_REQUEST, f"method {method!r} needs {_MISSING[asset]}")
        if reads_per_layer(method, return_layers) and not self.supports_layers:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"method {method!r} and return_layers need per-layer scores, "
                f"which this {self.engine_kind} engine does not provide" + self._unavailable(),
            )
        return reads_layer_logits(method, return_layers)

    def hidden_layers(self, method: str, requested: Sequence[int] | None) -> tuple[int, ...]:
        """The hidden-state entries a score request reads: those it asks for, then its method's."""
        wanted = list(requested or ())
        for layer in wanted:
            if layer > self.num_layers:
                raise JudgeError(
                    ErrorKind.INVALID_REQUEST,
                    f"hidden layer {layer} is out of range; this model has entries 0..{self.num_layers}",
                    {"hidden_layer": layer, "max_hidden_layer": self.num_layers},
                )
        wanted += [layer for layer in METHODS[method].hidden_layers(self.fitted) if layer not in wanted]
        if wanted and not self.supports_layers:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                f"hidden_layers and method 'probe' need per-layer capture, which this {self.engine_kind} engine "
                "does not provide" + self._unavailable(),
            )
        return tuple(wanted)

    def check_fitted_for(self, method: str, model: str, labels: Sequence[str], prompt_version: str) -> None:
        """A method's probe serves only the setup it was fitted for."""
        if METHODS[method].needs.asset != "probe":
            return
        assert self.probe is not None
        reason = self.probe.mismatch(model, labels, prompt_version)
        if reason is not None:
            raise JudgeError(ErrorKind.INVALID_REQUEST, f"method 'probe' cannot serve this request: {reason}")
