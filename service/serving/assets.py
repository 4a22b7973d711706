"""The fitted assets a score is read out with, loaded once when the app is built: LAGER's
layer weights, the calibration, the probe (each from its file, if set) and the review
thresholds (the calibration's conformal threshold unless one is set)."""

from __future__ import annotations

from dataclasses import dataclass

from service.config import Settings
from service.methods.calibration import Calibration
from service.methods.lager import LayerWeights
from service.methods.probe import Probe
from service.methods.readout import Fitted
from service.methods.review import ReviewThresholds


@dataclass(frozen=True)
class ReadoutAssets:
    layer_weights: LayerWeights | None
    calibration: Calibration | None
    probe: Probe | None
    review: ReviewThresholds

    @classmethod
    def load(cls, settings: Settings) -> ReadoutAssets:
        layer_weights = LayerWeights.load(settings.layer_weights_file) if settings.layer_weights_file else None
        calibration = Calibration.load(settings.calibration_file) if settings.calibration_file else None
        probe = Probe.load(settings.probe_file) if settings.probe_file else None
        conformal = calibration.min_calibrated_probability if calibration else None
        review = ReviewThresholds(
            min_confidence=settings.review_min_confidence,
            min_label_mass=settings.review_min_label_mass,
            min_calibrated_probability=(
                settings.review_min_calibrated_probability
                if settings.review_min_calibrated_probability is not None
                else conformal
            ),
        )
        return cls(layer_weights, calibration, probe, review)

    @property
    def fitted(self) -> Fitted:
        """What the methods read with: the layer weights and the probe."""
        return Fitted(self.layer_weights, self.probe)

    def check(self, settings: Settings, num_layers: int) -> None:
        """At startup: the layer weights and the probe must fit the loaded model."""
        weights, probe = self.layer_weights, self.probe
        if weights is not None and len(weights.weights) != num_layers:
            raise ValueError(
                f"{settings.layer_weights_file} has {len(weights.weights)} layer weights; the model needs "
                f"{num_layers} (one per layer entry but the final normed one)"
            )
        if probe is not None and any(not 0 <= layer <= num_layers for layer in probe.layers):
            raise ValueError(
                f"{settings.probe_file} reads hidden-state entries {probe.layers}; the model has 0..{num_layers}"
            )
