"""The decoder's linear layers on oneDNN's prepacked weights: the same model, the same numbers.

The reference is a deep copy of the model left on torch's own path; the packed model must
give its logits within float32 summation-order rounding, keep each plain weight for family
code that reads it and leave a tied weight alone; the engine must serve the same label
log-probabilities with packing on and off (each checked against the model's own float64
forward in tests/unit/engines/test_architectures.py).
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from service.core.tasks import ScoringTask
from service.engines.transformers import packed_linear
from service.engines.transformers.engine import TransformersEngine
from tests.conftest import tiny_llama

pytestmark = pytest.mark.skipif(not packed_linear.available(), reason="this torch build has no oneDNN")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("packed") / "llama", vocab=256, head_scale=40.0)


def _linears(root: torch.nn.Module, kind: type) -> int:
    return sum(type(m) is kind for m in root.modules())


def test_packed_decoder_gives_the_plain_logits(model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    plain = copy.deepcopy(model)
    replaced = packed_linear.pack_linears(model, model.get_decoder())
    # 7 projections per layer (q, k, v, o, gate, up, down), 2 layers; the head is not in the decoder.
    assert replaced == 14
    assert _linears(model.get_decoder(), packed_linear.PackedLinear) == 14
    assert _linears(model.get_decoder(), torch.nn.Linear) == 0
    q_plain, q_packed = plain.model.layers[0].self_attn.q_proj, model.model.layers[0].self_attn.q_proj
    assert torch.equal(q_packed.weight, q_plain.weight)
    ids = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = plain(input_ids=ids).logits
        got = model(input_ids=ids).logits
    assert want.abs().max() > 20  # sharp distributions: a wrong layer would show
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())


def test_shared_weights_stay_plain() -> None:
    torch.manual_seed(0)
    decoder = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 16, bias=False))
    tied = torch.nn.Linear(16, 16, bias=False)
    tied.weight = decoder[1].weight
    model = torch.nn.ModuleDict({"decoder": decoder, "head": tied})
    assert packed_linear.pack_linears(model, decoder) == 1
    assert type(decoder[0]) is packed_linear.PackedLinear
    assert type(decoder[1]) is torch.nn.Linear and decoder[1].weight is tied.weight


def test_bfloat16_layers_pack_where_the_cpu_can_and_stay_plain_where_it_cannot() -> None:
    """bfloat16 packing needs AVX-512 or AVX-NE-CONVERT: either way the load goes on, and
    every layer, packed or plain, gives F.linear's output within bfloat16 rounding."""
    torch.manual_seed(0)
    decoder = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 32)).to(torch.bfloat16)
    plain = copy.deepcopy(decoder)
    model = torch.nn.ModuleDict({"decoder": decoder})
    packed = packed_linear.pack_linears(model, decoder)
    assert packed in (0, 2)
    x = torch.randn(5, 64).to(torch.bfloat16)
    with torch.inference_mode():
        got, want = decoder(x).float(), plain(x).float()
    assert float((got - want).abs().max()) <= 2e-2 * max(float(want.abs().max()), 1.0)


def test_engine_serves_the_same_scores_packed_or_not(model_dir: Path) -> None:
    prompts = [tuple(range(5, 5 + n)) for n in (9, 33, 17)]
    tasks = [ScoringTask(p, (10, 11, 12, 13, 14)) for p in prompts]

    async def scores(packed: bool) -> tuple[int, list[tuple[float, ...]]]:
        engine = TransformersEngine(model_dir, "tiny", pad_token_id=0, device="cpu", packed_linear=packed)
        await engine.start()
        try:
            return engine.packed_layers, [tuple(r.logprobs) for r in await engine.score(tasks)]
        finally:
            await engine.close()

    packed_count, packed = asyncio.run(scores(True))
    plain_count, plain = asyncio.run(scores(False))
    assert (packed_count, plain_count) == (14, 0)
    spread = max(max(row) - min(row) for row in plain)
    assert spread > 1.0  # labels far apart: a wrong kernel would move them
    for a, b in zip(packed, plain, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5
