"""The core every layer shares: the typed queue boundary (``tasks``: what is asked of an
engine and what it returns), the domain errors without the web framework (``errors``) and
the label trie (``labels``).

Imports nothing of ours: every other package may import it.
"""
