"""LLM-as-a-judge scoring service: label distributions from a judge model over HTTP.

The packages are its layers; imports run one way, down this list (``tests/unit/test_layout.py``
holds the table):

- ``app``, ``config``, ``__main__``, ``cli``: the composition root and the commands;
- ``http``: routes, auth, middleware, the errors' HTTP mapping, pages, drain;
- ``jobs``: batch jobs, answered line by line through serving;
- ``serving``: one service per endpoint, and the runtime and lifecycle they share;
- ``requests``: a wire request becomes tasks (prompts, presets, rubrics, limits);
- ``scheduling``: the queue, batch cost, admission, the watchdog;
- ``engines``: the engine protocol, its factory, ``transformers/`` and ``vllm/``;
- ``methods``: the pure maths of judging; ``offline``: evaluation for the CLI and benches;
- ``core``: tasks, domain errors and labels; ``observability``: metrics and logs.
"""

__version__ = "0.1.0"
