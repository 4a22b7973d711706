"""The method table (``service.methods.readout``): serving and offline evaluation form
every method's distribution from it, and agree on the same read-out; ``lager_weighted``
reads the layer variant its weights were fitted on; a request reads what its method needs."""

from __future__ import annotations

import random

import pytest
from judge_client.protocol import score_request

from service.core.errors import ErrorKind, JudgeError
from service.core.tasks import LabelScores, ScoringTask
from service.methods import scoring
from service.methods.lager import LayerWeights
from service.methods.probe import Probe
from service.methods.readout import METHODS, Fitted
from service.methods.review import ReviewThresholds
from service.offline.evaluation import Labelled, Scored, method_distributions
from service.requests.readouts import ReadoutSupport, reads_layer_logits, reads_per_layer
from service.requests.score import Criterion
from service.serving.assets import ReadoutAssets
from service.serving.score import ScoreAnswer

LABELS = ("1", "2", "3", "4", "5")
VALUES = (1.0, 2.0, 3.0, 4.0, 5.0)
ENTRIES = 5  # hidden-state entries: embeddings, three layers, the final normed output
HIDDEN_LAYERS = (3, 1)  # as a task asks: the request's, then the probe's
WIDTH = 4


def rows(rng: random.Random, count: int, width: int) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(rng.uniform(-4, 4) for _ in range(width)) for _ in range(count))


@pytest.fixture(scope="module")
def result() -> LabelScores:
    """One engine result with everything read: both layer variants differ, as they do."""
    rng = random.Random(7)
    logits = [rng.uniform(-9, -1) for _ in LABELS]
    return LabelScores(
        logprobs=tuple(logits),
        layer_logits=rows(rng, ENTRIES, len(LABELS)),
        layer_logits_normed=rows(rng, ENTRIES, len(LABELS)),
        hidden=rows(rng, len(HIDDEN_LAYERS), WIDTH),
    )


def probe() -> Probe:
    rng = random.Random(3)
    return Probe(
        layers=[1],
        mean=[0.0] * WIDTH,
        scale=[1.0] * WIDTH,
        weights=[list(row) for row in rows(rng, len(LABELS), WIDTH)],
        bias=[0.0] * len(LABELS),
        strength=1.0,
        model="m",
        labels=list(LABELS),
        values=list(VALUES),
        template="raw",
        prompt_version="v",
    )


def weights(layer_norm: bool) -> LayerWeights:
    return LayerWeights(weights=[0.5, -1.0, 2.0, 0.0], layer_norm=layer_norm, model="m")


def served(result: LabelScores, method: str, layer_norm: bool, fitted: Fitted) -> scoring.Distribution:
    """The distribution ``/v1/score`` answers with for ``method`` on ``result``."""
    request = score_request({"items": [{"id": "a", "prompt": "x"}], "method": method, "layer_norm": layer_norm})
    assets = ReadoutAssets(fitted.layer_weights, None, fitted.probe, ReviewThresholds())
    task = ScoringTask(token_ids=(1, 2, 3), label_ids=(4, 5, 6, 7, 8), want_layers=True, hidden_layers=HIDDEN_LAYERS)
    return ScoreAnswer(request, "m", assets, layer_norm).reading(Criterion(None, None, 1.0, "v"), task, result).dist


def scored(result: LabelScores) -> Scored:
    """The same numbers as offline evaluation collects them."""
    assert result.layer_logits is not None and result.layer_logits_normed is not None
    item = Labelled("a", "q", "r", None, None, 3.0)
    return Scored(
        item,
        result.logprobs,
        result.layer_logits,
        result.layer_logits_normed,
        hidden=result.hidden,
        hidden_layers=HIDDEN_LAYERS,
    )


@pytest.mark.parametrize("fitted_normed", [False, True])
def test_serving_and_offline_evaluation_form_every_method_alike(result: LabelScores, fitted_normed: bool) -> None:
    fitted = Fitted(weights(fitted_normed), probe())
    offline = method_distributions([scored(result)], LABELS, VALUES, fitted.layer_weights)
    assert set(offline) == {"final", "lager", "lager (layer_norm)", "lager_weighted"}
    for name, method, layer_norm in [
        ("final", "final", False),
        ("lager", "lager", False),
        ("lager (layer_norm)", "lager", True),
        ("lager_weighted", "lager_weighted", False),
        ("lager_weighted", "lager_weighted", True),
    ]:
        assert served(result, method, layer_norm, fitted) == offline[name][0], (name, layer_norm)
    # The probe reads its own layer's row, wherever the task's rows put it.
    offline_probe = METHODS["probe"].distribution(scored(result).readout, LABELS, VALUES, fitted)
    assert served(result, "probe", False, fitted) == offline_probe
    assert result.hidden is not None
    assert offline_probe == scoring.distribution(LABELS, fitted.probe.logits([result.hidden[1]]), VALUES)


@pytest.mark.parametrize("fitted_normed", [False, True])
def test_lager_weighted_reads_the_variant_its_weights_were_fitted_on(result: LabelScores, fitted_normed: bool) -> None:
    fitted = Fitted(weights(fitted_normed))
    assert fitted.layer_weights is not None and result.layer_logits is not None
    variant = result.layer_logits_normed if fitted_normed else result.layer_logits
    other = result.layer_logits if fitted_normed else result.layer_logits_normed
    assert variant is not None and other is not None
    expected = scoring.distribution(LABELS, scoring.lager_logits(variant, fitted.layer_weights.weights), VALUES)
    wrong = scoring.distribution(LABELS, scoring.lager_logits(other, fitted.layer_weights.weights), VALUES)
    assert expected.probs != wrong.probs
    for layer_norm in (False, True):  # whatever the request asks of lager
        assert served(result, "lager_weighted", layer_norm, fitted) == expected


def test_a_request_reads_what_its_method_needs() -> None:
    assert [reads_layer_logits(m, False) for m in METHODS] == [False, True, True, False]
    assert [reads_per_layer(m, False) for m in METHODS] == [False, True, True, True]
    assert reads_layer_logits("final", True) and reads_per_layer("final", False, [2])
    support = ReadoutSupport("transformers", supports_layers=True, num_layers=4, probe=probe())
    assert support.hidden_layers("probe", [3, 1]) == (3, 1)
    assert support.hidden_layers("final", [3]) == (3,)
    assert support.wants_layers("probe", False) is False


def test_a_method_without_its_asset_is_refused_by_name() -> None:
    support = ReadoutSupport("transformers", supports_layers=True, num_layers=4)
    messages = {
        "lager_weighted": "method 'lager_weighted' needs layer weights; the server has none (JUDGE_LAYER_WEIGHTS_FILE)",
        "probe": "method 'probe' needs a probe; the server has none (JUDGE_PROBE_FILE)",
    }
    for method, message in messages.items():
        with pytest.raises(JudgeError) as refused:
            support.wants_layers(method, False)
        assert refused.value.kind is ErrorKind.INVALID_REQUEST and refused.value.message == message
