"""Request preparation: a wire request becomes tasks. Each endpoint's preparation
(``score``, ``compare``, ``rank``: its tasks and what its answer needs, a
``prepared.Prepared``, from the prompts and limits handed in), prompts and their
templates, published presets, rubrics, the limits a request is checked against
(``limits``: the deployment's caps, the tokenizer's, what the engine can read out, the
work's deadline, queue and memory), and what a request that fails validation is told.

May import ``service.methods`` (what a method reads, a ranking's pairs),
``service.scheduling`` (a batch's cost), ``service.engines``, ``service.core`` and
``service.config``; not the services or HTTP.
"""
