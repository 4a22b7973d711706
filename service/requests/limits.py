"""Every deployment limit, checked in one place before anything is queued.

The wire models (``judge_client.protocol``) carry the structural rules; what depends on
the deployment is here, in four parts by what each depends on:

- ``caps.RequestCaps`` (the settings): items, criteria and candidates per request, the
  critique's length, the chat-template arguments allowed;
- ``tokens.TokenLimits`` (the loaded tokenizer): what it makes of a label, a critique's
  marker and a prompt, against the model's length;
- ``readouts.ReadoutSupport`` (the engine and the fitted assets): the methods per-layer
  capture, the layer weights and the probe allow, and the hidden-state entries there are;
- ``work.WorkLimits`` (the queue and the engine's batches): the deadline, a request's
  prompts against the queue, each prompt against one batch's memory.

Each check raises a ``JudgeError`` naming the field or label, so a bad request is refused
whole and nothing downstream validates again.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.core.errors import ErrorKind, JudgeError
from service.core.tasks import Critique
from service.requests.caps import RequestCaps
from service.requests.readouts import ReadoutSupport
from service.requests.tokens import TokenLimits
from service.requests.work import WorkLimits


@dataclass(frozen=True)
class Limits:
    """The limits of one loaded judge."""

    caps: RequestCaps
    tokens: TokenLimits
    readouts: ReadoutSupport
    work: WorkLimits

    def critique(self, max_tokens: int, marker: str, wants_layers: bool) -> Critique:
        """Critique mode within this deployment's limits. The per-layer methods read the
        layers at the prompt's last position, which a critique moves: they are refused."""
        if wants_layers:
            raise JudgeError(
                ErrorKind.INVALID_REQUEST,
                "critique mode reads the final distribution only; the per-layer methods "
                "(lager, lager_weighted, return_layers), the probe and hidden_layers cannot be combined with it",
                {"field": "critique"},
            )
        self.caps.check_critique_tokens(max_tokens)
        return Critique(max_tokens, marker, self.tokens.marker_ids(marker))
