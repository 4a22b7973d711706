"""Grouped-head attention on CPU: the numbers of transformers' own sdpa attention, without the
copies of the key/value heads.

The reference is transformers' ``sdpa_attention_forward`` itself, on the same inputs; the
engine-level check (served scores against the model's own forward pass, for every family)
is tests/unit/engines/test_architectures.py.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from service.engines.transformers import attention
from tests.conftest import tiny_llama


class _Grouped(torch.nn.Module):
    num_key_value_groups = 3
    is_causal = True


def test_grouped_sdpa_equals_transformers_sdpa_with_a_mask() -> None:
    generator = torch.Generator().manual_seed(0)
    query = torch.randn((4, 9, 13, 16), generator=generator)
    key = torch.randn((4, 3, 40, 16), generator=generator)
    value = torch.randn((4, 3, 40, 16), generator=generator)
    # Left padding of different widths, causal over the last 13 positions.
    mask = torch.ones((4, 1, 13, 40), dtype=torch.bool).tril(27)
    for row, pad in enumerate((0, 5, 11, 26)):
        mask[row, :, :, :pad] = False
    want, _ = sdpa_attention_forward(_Grouped(), query, key, value, mask, scaling=0.25)
    got, _ = attention.grouped_sdpa(_Grouped(), query, key, value, mask, scaling=0.25)
    assert got.shape == want.shape == (4, 13, 9, 16)
    assert torch.equal(got, want)
    # Without a mask it is transformers' own function, causal path included.
    want, _ = sdpa_attention_forward(_Grouped(), query, key[:, :, :13], value[:, :, :13], None)
    got, _ = attention.grouped_sdpa(_Grouped(), query, key[:, :, :13], value[:, :, :13], None)
    assert torch.equal(got, want)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 4 query heads on 2 key/value heads.
    return tiny_llama(tmp_path_factory.mktemp("grouped") / "llama", vocab=256, head_scale=40.0)


def test_grouped_model_switches_and_keeps_its_numbers(model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    plain = copy.deepcopy(model)
    assert attention.use_grouped_attention(model)
    assert model.config._attn_implementation == attention.NAME
    assert plain.config._attn_implementation == "sdpa"
    ids = torch.randint(3, 256, (3, 30), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :7] = mask[2, :19] = 0  # left padding: the masked path
    with torch.inference_mode():
        want = plain(input_ids=ids, attention_mask=mask).logits
        got = model(input_ids=ids, attention_mask=mask).logits
        unmasked = plain(input_ids=ids).logits
    assert want.abs().max() > 10
    # The mask matters (a path that ignored it would show), and the numbers are the same.
    assert float((unmasked[1] - want[1]).abs().max()) > 1.0
    assert torch.equal(got, want)


def test_ungrouped_model_keeps_sdpa(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4
    )
    model = LlamaForCausalLM(config).eval()
    assert not attention.use_grouped_attention(model)
    assert model.config._attn_implementation == "sdpa"
