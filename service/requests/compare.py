"""A ``/v1/compare`` request prepared: one task per pair and order (A first, then B first,
or A first alone without swapping), each a critique task in critique mode, with its own
critique in its own order; and the answer's prompt version."""

from __future__ import annotations

from judge_client.compare import CompareRequest

from service.core.tasks import ScoringTask
from service.requests.limits import Limits
from service.requests.prepared import Prepared
from service.requests.prompts import VERDICT_LABELS, Prompts

# The orders a pair is judged in, as its tasks come: A shown first, then B first.
ORDERS = ("ab", "ba")


def prepare_compare(request: CompareRequest, prompts: Prompts, limits: Limits) -> Prepared[str]:
    """The request's tasks, pair-major; the context is the answer's prompt version."""
    chat_kwargs = limits.caps.chat_template_kwargs(request.chat_template_kwargs)
    limits.caps.check_count(len(request.pairs), "pairs")
    limits.work.check_prompts(len(request.pairs) * (2 if request.swap else 1))
    trie = limits.tokens.label_trie(VERDICT_LABELS)
    spec = request.critique
    critique = limits.critique(spec.max_tokens, spec.marker, False) if spec is not None else None
    marker = spec.marker if spec is not None else None
    tasks = []
    for index, pair in enumerate(request.pairs):
        orders = [(pair.response_a, pair.response_b)]
        if request.swap:
            orders.append((pair.response_b, pair.response_a))
        for first, second in orders:
            text = prompts.pair(pair.instruction, first, second, request.criteria, chat_kwargs, marker)
            token_ids = limits.tokens.encode(text, index, pair.id, critique)
            tasks.append(ScoringTask.reading(token_ids, trie, critique=critique))
    return Prepared(tasks, prompts.pair_version(request.criteria, chat_kwargs, marker))
