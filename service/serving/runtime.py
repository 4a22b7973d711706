"""The runtime: the one long-lived object behind every service.

It loads the model's tokenizer, starts the engine, plans what one pass may hold, starts
the scheduler and the watchdog, and builds the prompts and the limits requests are
checked against; services run their tasks through its two runners (``online`` and
``batch``: ``service.serving.runner``). It moves its ``Lifecycle`` (readiness, drain,
liveness, the exit code: ``service.serving.lifecycle``) along as it starts, fails and
shuts down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from service.config import Settings
from service.core.errors import ErrorKind, JudgeError
from service.core.tasks import ScoringTask
from service.engines import failpoints
from service.engines.base import Engine, EngineCapabilities
from service.engines.factory import build_engine, choose_engine
from service.engines.memory import batch_memory_budget, resident_bytes
from service.engines.model_store import resolve_model
from service.observability.metrics import Metrics
from service.requests.caps import RequestCaps
from service.requests.limits import Limits
from service.requests.prompts import Prompts
from service.requests.readouts import ReadoutSupport
from service.requests.tokens import TokenLimits
from service.requests.work import WorkLimits
from service.scheduling.passes import PassLimits
from service.scheduling.scheduler import Scheduler
from service.scheduling.watchdog import Watchdog
from service.serving.assets import ReadoutAssets
from service.serving.lifecycle import Lifecycle
from service.serving.runner import BatchRunner, OnlineRunner

logger = logging.getLogger(__name__)

# The calibration batch run at startup (twice: a warm-up, then timed): a first throughput
# measurement, so deadline-aware admission has a prediction before the first real batch.
CALIBRATION_ITEMS = 4
CALIBRATION_TOKENS = 256


class Runtime:
    """Model, engine and scheduler; the fitted readout assets (``assets``) and the lifecycle
    are built once by the app and handed in."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        assets: ReadoutAssets | None = None,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        # Resolved once: ``auto`` probes for vLLM and a GPU, which do not change while serving.
        self.engine_kind = choose_engine(settings.engine)
        self.engine: Engine | None = None
        self.capabilities: EngineCapabilities | None = None
        self.scheduler: Scheduler | None = None
        self.prompts: Prompts | None = None
        self.limits: Limits | None = None
        self.assets = assets if assets is not None else ReadoutAssets.load(settings)
        self.lifecycle = lifecycle if lifecycle is not None else Lifecycle(settings, metrics)
        self.lifecycle.parts_alive = self._parts_alive
        self.watchdog = Watchdog(settings.stall_multiple, settings.stall_floor_s, on_stall=self.lifecycle.stalled)
        self._watching: asyncio.Task[None] | None = None
        # What the services run their tasks on: online requests, and batch jobs' lines.
        self.online = OnlineRunner(self._scheduling)
        self.batch = BatchRunner(self._scheduling)

    @property
    def model_name(self) -> str:
        return self.settings.model

    async def start(self) -> None:
        """Load the model, warm it up, plan its memory, start the scheduler; mark ready. A
        failure is logged and leaves the runtime failed, with any engine that had started
        closed again."""
        started = time.monotonic()
        self.lifecycle.loading()
        engine = None
        try:
            model_dir, tokenizer = await asyncio.to_thread(self._load_tokenizer)
            engine = build_engine(self.settings, self.engine_kind, model_dir, tokenizer)
            capabilities = await engine.start()
            self.assets.check(self.settings, capabilities.num_layers)
            max_model_len = min(capabilities.max_model_len, self.settings.max_model_len or capabilities.max_model_len)
            seed = await self._calibrate(engine, len(tokenizer), min(CALIBRATION_TOKENS, max_model_len))
            memory_budget = self._plan_memory(engine)
            passes = PassLimits.of(capabilities, self.settings.max_queue, memory_budget)
            self.prompts = Prompts(tokenizer)
            self.limits = self._limits(tokenizer, max_model_len, capabilities, engine, memory_budget)
            self.scheduler = self._make_scheduler(engine, passes, seed)
            self.engine, self.capabilities = engine, capabilities
            self.metrics.prefix_cache.source = lambda: getattr(self.engine, "prefix_cache", None)
        except Exception:
            self.lifecycle.fail()
            logger.exception("failed to load the judge model")
            if self.scheduler is not None:
                await self.scheduler.close(0)
            await self._close(engine)
            return
        self.metrics.model_info.info({"model": self.settings.model, "engine": self.engine_kind})
        self._watching = asyncio.create_task(self.watchdog.run(engine), name="watchdog")
        self.lifecycle.loaded()
        logger.info(
            "judge ready: model=%s engine=%s in %.1fs",
            self.settings.model,
            self.engine_kind,
            time.monotonic() - started,
        )

    def _limits(
        self, tokenizer: Any, max_model_len: int, capabilities: EngineCapabilities, engine: Engine, memory_budget: int
    ) -> Limits:
        """What requests are checked against, once the engine has started: the model's length
        is the engine's, capped by the setting."""
        s = self.settings
        return Limits(
            RequestCaps.from_settings(s),
            TokenLimits(tokenizer, max_model_len),
            ReadoutSupport.of(self.engine_kind, capabilities, self.assets.layer_weights, self.assets.probe),
            WorkLimits.from_settings(s, engine, memory_budget),
        )

    def _load_tokenizer(self) -> tuple[Path, Any]:
        from transformers import AutoTokenizer

        failpoints.block("LOAD_BLOCK")
        model_dir = resolve_model(self.settings.model, self.settings.cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        return model_dir, tokenizer

    def _make_scheduler(self, engine: Engine, passes: PassLimits, seed: tuple[float, int]) -> Scheduler:
        wait_ms = self.settings.max_wait_ms
        if wait_ms is None:
            # An engine that batches by itself gains nothing from waiting.
            wait_ms = 0.0 if passes.continuous else 2.0
        scheduler = Scheduler(
            engine,
            passes,
            self.metrics,
            watchdog=self.watchdog,
            max_queue=self.settings.max_queue,
            max_batch_size=self.settings.max_batch_size,
            max_wait_s=wait_ms / 1000,
            # A scheduler loop cannot be restarted safely: the judge fails, and exits.
            on_stopped=self.lifecycle.fail,
            max_retry_after_s=self.settings.max_request_timeout_s,
        )
        scheduler.throughput.seed(*seed)
        scheduler.start()
        return scheduler

    async def _calibrate(self, engine: Engine, vocab_size: int, length: int) -> tuple[float, int]:
        """Run a batch of distinct prompts on the engine to warm it up, then another, timed:
        admission's and the watchdog's first throughput measurement (seconds, tokens). No
        prompt shares a prefix with another, so no prefix cache serves the timed batch; the
        cache is emptied after."""
        tasks = [
            ScoringTask(
                token_ids=tuple((item * 7919 + k * 104729 + 1000) % vocab_size for k in range(length)),
                label_ids=(0,),
            )
            for item in range(2 * CALIBRATION_ITEMS)
        ]
        await engine.score(tasks[:CALIBRATION_ITEMS])
        timed = tasks[CALIBRATION_ITEMS:]
        started = time.monotonic()
        await engine.score(timed)
        seed = (time.monotonic() - started, sum(task.length for task in timed))
        self.watchdog.plain.throughput.seed(*seed)
        await engine.reset_prefix_cache()
        return seed

    def _plan_memory(self, engine: Engine) -> int:
        """The memory one pass may hold, once the model is loaded and warm
        (``service.engines.memory``); an engine that holds its cache itself plans none."""
        if self.engine_kind != "transformers":
            return 1 << 62
        s = self.settings
        cache = (s.prefix_cache_mb << 20) if s.prefix_reuse else 0
        budget = batch_memory_budget(s.max_batch_memory_mb, s.memory_limit_mb, resident_bytes(), cache)
        engine.limit_pass_memory(budget)
        logger.info("one batch may hold %d MiB", budget >> 20)
        return budget

    def _parts_alive(self) -> bool:
        """Whether the engine (if any) is healthy and the scheduler's loops (if any) run."""
        if self.engine is not None and not self.engine.healthy:
            return False
        return self.scheduler is None or self.scheduler.running

    def require_ready(self) -> tuple[Prompts, Limits]:
        if not self.lifecycle.accepting or self.prompts is None or self.limits is None:
            raise JudgeError(ErrorKind.UNAVAILABLE, "the judge is not ready")
        return self.prompts, self.limits

    def _scheduling(self) -> tuple[Scheduler, WorkLimits]:
        """The scheduler and the work limits, for the runners: 503 until the judge is ready."""
        if self.scheduler is None or self.limits is None or not self.lifecycle.accepting:
            raise JudgeError(ErrorKind.UNAVAILABLE, "the judge is not ready")
        return self.scheduler, self.limits.work

    async def shutdown(self) -> None:
        self.lifecycle.begin_drain()
        if self._watching is not None:
            self._watching.cancel()
        if self.scheduler is not None:
            await self.scheduler.close(self.lifecycle.grace_left())
        await self._close(self.engine)

    async def _close(self, engine: Engine | None) -> None:
        if engine is None:
            return
        try:
            await engine.close()
        except Exception:
            logger.exception("closing the engine failed")
        if engine is self.engine:
            self.engine = None
