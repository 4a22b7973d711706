"""Batch jobs: the OpenAI Batch API's files and batches, durable in a store, run by a
worker through the serving layer in the queue's low-priority batch lane.

Owns the store (``store`` defines it, ``sqlite`` implements it), the input file's
validation (``lines``), the batch lane (``lane``) and the worker (``worker``). Imports
serving, the runtime and the engines' types; nothing of ours imports it but the app and
its routes.
"""
