"""Critique mode's stopping rule, shared by both engines.

A critique is generated greedily after the prompt. It ends at the first generated token
at which the decoded generated text contains the marker, after ``max_tokens`` tokens, or
at an end-of-sequence token (which is neither kept nor fed back). Both engines apply this
one rule to the tokens they generate, so their critiques end at the same token.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from service.core.tasks import Critique, CritiqueOutcome

Decode = Callable[[Sequence[int]], str]


def decoder(tokenizer: Any) -> Decode:
    """The text of generated tokens, special tokens kept (so a marker is found as written)."""
    return lambda ids: str(tokenizer.decode(list(ids), skip_special_tokens=False))


def stop_token_ids(tokenizer: Any, model_dir: Path) -> frozenset[int]:
    """The tokens that end a generation: the tokenizer's end of sequence and the model's
    generation config's (a chat model often ends its turn with a token of its own)."""
    from transformers import GenerationConfig

    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    try:
        eos = GenerationConfig.from_pretrained(str(model_dir), local_files_only=True).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    ids.update([eos] if isinstance(eos, int) else list(eos or []))
    return frozenset(ids)


def extend(generated: list[int], token: int, spec: Critique, stop_ids: Collection[int], decode: Decode) -> bool | None:
    """Take one more greedily chosen ``token`` into ``generated``. Returns None while the
    critique goes on, else whether the marker was found."""
    if token in stop_ids:
        return False
    generated.append(token)
    if spec.marker in decode(generated):
        return True
    if len(generated) >= spec.max_tokens:
        return False
    return None


def truncate(
    token_ids: Sequence[int], spec: Critique, stop_ids: Collection[int], decode: Decode
) -> tuple[list[int], bool]:
    """The tokens the rule keeps of a generation that may run past where the rule stops
    (an engine's own stop strings can cut text mid-token), and whether the marker came."""
    generated: list[int] = []
    for token in token_ids:
        found = extend(generated, token, spec, stop_ids, decode)
        if found is not None:
            return generated, found
    return generated, False


def outcome(generated: Sequence[int], found: bool, decode: Decode) -> CritiqueOutcome:
    return CritiqueOutcome(text=decode(generated), marker_found=found, tokens=len(generated))
