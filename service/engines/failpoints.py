"""Failpoints: faults compiled into the real code paths, off unless an environment
variable turns them on, the way databases test their fault handling.

``JUDGE_FAILPOINT_<NAME>=1`` makes ``block("<NAME>")`` hold the calling thread for as long
as the variable stays set: a pass or a load that never returns, for the watchdog's tests.
Unsetting the variable lets the thread go on, so a test can clean up after itself.

| failpoint | where |
|---|---|
| ``PASS_BLOCK`` | the transformers engine's forward pass and its probe, inside the model lock |
| ``LOAD_BLOCK`` | the model load, in the load thread (both engines) |
"""

from __future__ import annotations

import os
import time

PREFIX = "JUDGE_FAILPOINT_"
# How often a blocked thread looks at its variable again.
POLL_S = 0.05


def active(name: str) -> bool:
    return os.environ.get(PREFIX + name) == "1"


def block(name: str) -> None:
    """Hold the calling thread while ``JUDGE_FAILPOINT_<name>=1``; return at once otherwise."""
    while active(name):
        time.sleep(POLL_S)
