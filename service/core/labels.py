"""Labels of any number of tokens: the label trie, and the exact probability of each label.

Each label is tokenised alone, without special tokens. A label ``l = t_1..t_n`` gets

    log P(l) = sum_k log P(t_k | prompt, t_1..t_{k-1}) + log S(l)
    S(l)     = 1 - sum_c P(c | prompt, l)

where ``c`` runs over the distinct next tokens of the labels that extend ``l`` token by
token (``S(l) = 1`` when none does). So with labels "1".."10" on a tokenizer that splits
"10" into "1", "0", the label "1" means "1" followed by anything but "0".

The engines read one distribution per trie node that has children: the root (the
prompt's own last position) and every label prefix that some longer label extends. Of
each, only the children's log-probabilities are kept. Single-token labels make a trie
of the root alone, and ``log P(l)`` is then the next-token log-probability itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LabelTrie:
    """The labels' token sequences, and where and what an engine must read for them."""

    sequences: tuple[tuple[int, ...], ...]  # one per label, in label order
    nodes: tuple[tuple[int, ...], ...]  # prefixes with children: the root () first
    children: tuple[tuple[int, ...], ...]  # per node, its distinct next tokens

    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]]) -> LabelTrie:
        seqs = tuple(tuple(s) for s in sequences)
        if any(not s for s in seqs):
            raise ValueError("a label must be at least one token")
        if len(set(seqs)) != len(seqs):
            raise ValueError("two labels have the same token sequence")
        children: dict[tuple[int, ...], list[int]] = {}
        for seq in seqs:
            for k, token in enumerate(seq):
                nexts = children.setdefault(seq[:k], [])
                if token not in nexts:
                    nexts.append(token)
        # The root first, then by depth and first appearance: deterministic for a label set.
        order = sorted(children, key=lambda prefix: (len(prefix), list(children).index(prefix)))
        return cls(seqs, tuple(order), tuple(tuple(children[p]) for p in order))

    @property
    def single_token(self) -> bool:
        return len(self.nodes) == 1

    @property
    def root_ids(self) -> tuple[int, ...]:
        """The tokens read at the prompt's last position (the labels' first tokens)."""
        return self.children[0]

    def continuations(self) -> tuple[tuple[int, ...], ...]:
        """The prefixes past the root: each needs one more position read after the prompt."""
        return self.nodes[1:]

    def label_logprobs(self, node_logprobs: Sequence[Sequence[float]]) -> tuple[float, ...]:
        """``log P(l)`` of every label from each node's children log-probabilities
        (``node_logprobs[i][j]``: node ``i``, child ``children[i][j]``)."""
        if len(node_logprobs) != len(self.nodes):
            raise ValueError(f"{len(node_logprobs)} node distributions for {len(self.nodes)} trie nodes")
        at = {
            node: dict(zip(kids, row, strict=True))
            for node, kids, row in zip(self.nodes, self.children, node_logprobs, strict=True)
        }
        out = []
        for seq in self.sequences:
            total = sum(at[seq[:k]][token] for k, token in enumerate(seq))
            if seq in at:
                # S(l): the label ends here, so no longer label's next token follows.
                extended = sum(math.exp(lp) for lp in at[seq].values())
                total += math.log(max(1.0 - extended, 0.0)) if extended < 1.0 else -math.inf
            out.append(total)
        return tuple(out)
