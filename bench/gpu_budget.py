"""Time budgets for bench/gpu.py: each stage has its own, the whole run a total.

A stage runs its steps while its time lasts: a step that would not fit is skipped and
recorded (``skipped``), as is a stage that fails (``error``), and the run goes on to the
next stage. Steps that wait (a server coming up) wait no longer than the stage's time.
Past the total and a grace period, a watchdog writes the report as it stands, stops the
server processes and ends the run: the report always comes back.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any


class Stage:
    """One stage's clock and record."""

    def __init__(self, name: str, budget_s: float, total_deadline: float) -> None:
        self.name = name
        self.budget_s = budget_s
        self.started = time.monotonic()
        self.deadline = min(self.started + budget_s, total_deadline)
        self.record: dict[str, Any] = {"budget_s": budget_s, "status": "running", "skipped": []}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, step: str, needs_s: float) -> bool:
        """Whether ``step``, expected to take ``needs_s``, fits in the time left; if not it
        is recorded as skipped."""
        if self.left() >= needs_s:
            return True
        self.skip(step, f"needs ~{needs_s:.0f} s, {max(self.left(), 0):.0f} s left")
        return False

    def skip(self, step: str, why: str) -> None:
        self.record["skipped"].append(f"{step}: {why}")
        print(f"[{self.name}] skipped {step}: {why}", flush=True)


class Budget:
    """The run's clock: stages in turn, the report saved after each."""

    def __init__(
        self, total_s: float, grace_s: float, save: Callable[[], None], on_timeout: Callable[[], None]
    ) -> None:
        self.started = time.monotonic()
        self.total_s = total_s
        self.deadline = self.started + total_s
        self.stages: dict[str, dict[str, Any]] = {}
        self._save = save
        self._on_timeout = on_timeout
        self._watchdog = threading.Timer(total_s + grace_s, self._expired)
        self._watchdog.daemon = True
        self._watchdog.start()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def run(self, name: str, budget_s: float, work: Callable[[Stage], None]) -> None:
        """Run one stage, ``work(stage)``: its exception is recorded (the run goes on), and
        so is its time; the report is saved after it."""
        stage = Stage(name, budget_s, self.deadline)
        self.stages[name] = stage.record
        print(f"== {name} (budget {budget_s:.0f} s, {self.total_s - self.elapsed():.0f} s of the run left)", flush=True)
        try:
            if stage.left() <= 0:
                stage.skip("the whole stage", "the run's total time is spent")
                stage.record["status"] = "skipped"
            else:
                work(stage)
                stage.record["status"] = "partial" if stage.record["skipped"] else "done"
        except Exception as exc:
            stage.record["status"] = "failed"
            stage.record["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            stage.record["spent_s"] = round(time.monotonic() - stage.started, 2)
            print(f"== {name}: {stage.record['status']} in {stage.record['spent_s']:.1f} s", flush=True)
            self._save()

    def close(self) -> None:
        self._watchdog.cancel()

    def _expired(self) -> None:
        print("== the run is past its total time: writing the report as it stands and stopping", flush=True)
        for record in self.stages.values():
            if record["status"] == "running":
                record["status"] = "stopped at the run's time limit"
        try:
            self._save()
            self._on_timeout()
        finally:
            os._exit(3)
