"""Build a tiny causal LM + tokenizer locally (no hub access needed).

The model is a real ``transformers`` architecture (Qwen2 by default; Llama and Qwen3 also
supported) built from a config with seeded random weights, and the tokenizer is a byte-level
BPE trained in about a second with the ``tokenizers`` library on synthetic arithmetic/chat
text. Digits are always split into single-digit tokens, which is what makes arithmetic
learnable for a model this small.

Both are saved with ``save_pretrained`` into one directory so that everything downstream
(``AutoModelForCausalLM``, ``AutoTokenizer``, vLLM) can load it like any hub checkpoint.

Typical use::

    from rlcore.tiny_model import ensure_tiny_model
    path = ensure_tiny_model("runs/tiny-qwen2")      # builds once, then reuses

CLI::

    python -m rlcore.tiny_model OUT_DIR [--hidden-size 256 --num-layers 4 ...] [--force]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "SUPPORTED_ARCHS",
    "build_tokenizer",
    "build_tiny_model",
    "ensure_tiny_model",
    "count_parameters",
    "main",
]

BOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
# Order fixes the ids: <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2, <|pad|>=3.
SPECIAL_TOKENS = [BOS_TOKEN, IM_START, IM_END, PAD_TOKEN]

# ChatML. Every message is "<|im_start|>{role}\n{content}<|im_end|>\n"; the generation prompt
# is "<|im_start|>assistant\n". The model ends its answer with <|im_end|> (= eos).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SUPPORTED_ARCHS = ("qwen2", "llama", "qwen3")

# Stored next to the model so ensure_tiny_model can tell whether an existing build matches.
BUILD_INFO_FILE = "rlcore_tiny_model.json"

_WORDS = (
    "the a an is of to and in that it for on with as are was be this by or at from what "
    "which how many much sum total answer final put add plus minus equals result compute "
    "number numbers problem solution question step first then so we get let think check "
    "box boxed value each all some more less than one two three four five six seven eight "
    "nine ten hello world model reason reasoning correct wrong yes no please give only "
    "user assistant system you are helpful math short"
).split()


def _synthetic_corpus(seed: int, n_lines: int = 3000) -> list[str]:
    """Synthetic text for BPE training: ChatML arithmetic dialogues plus English-ish lines."""
    rng = random.Random(f"tiny-tokenizer-{seed}")
    lines: list[str] = []
    for _ in range(n_lines):
        k = rng.randint(2, 5)
        nums = [rng.randint(0, rng.choice((9, 9, 99, 999))) for _ in range(k)]
        ops = [rng.choice("+-*") for _ in range(k - 1)]
        problem = str(nums[0]) + "".join(o + str(x) for o, x in zip(ops, nums[1:]))
        answer = str(rng.randint(-999, 9999))
        r = rng.random()
        if r < 0.5:
            user = f"{problem}="
        elif r < 0.8:
            user = f"What is {problem}? Put the final answer in \\boxed{{}}."
        else:
            user = f"Compute {problem}."
        assistant = (
            f"\\boxed{{{answer}}}" if rng.random() < 0.7 else f"{problem}={answer}. The answer is \\boxed{{{answer}}}."
        )
        # The chat structure without the special tokens themselves: the BPE trainer does not
        # split on special tokens, so literal "<|im_start|>" text would only waste merges on
        # fragments like "<|" and "im".
        if rng.random() < 0.2:
            lines.append("system\nYou are a helpful assistant.\n")
        lines.append(f"user\n{user}\nassistant\n{assistant}\n")
        # generic English-ish text
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        lines.append(" ".join(words) + rng.choice((".", "?", "!", ",", ":")) + "\n")
    return lines


# Same split as Qwen2's tokenizer. ``\p{N}`` matches ONE digit, so every digit is its own
# pre-token and BPE can never merge digits (the effect of ``Digits(individual_digits=True)``).
# Using exactly Qwen2's normalizer + pre-tokenizer matters: for model_type "qwen2",
# transformers 5.x ``AutoTokenizer`` ignores ``tokenizer_class`` and rebuilds a
# ``Qwen2Tokenizer`` from vocab/merges with this pre-tokenizer, so a tokenizer trained with
# any other split would silently produce different ids after a reload.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def _build_raw_tokenizer(seed: int, vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_synthetic_corpus(seed), trainer=trainer)
    return tok


def build_tokenizer(*, seed: int = 0, vocab_size: int = 352):
    """Train the byte-level BPE and wrap it as a ``PreTrainedTokenizerFast`` (chat template,
    eos=<|im_end|>, pad=<|pad|>, bos=<|endoftext|>, left padding)."""
    from transformers import PreTrainedTokenizerFast

    raw = _build_raw_tokenizer(seed, vocab_size)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=BOS_TOKEN,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=None,
        additional_special_tokens=[IM_START],
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=None,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _model_config(arch: str, *, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int,
                  num_kv_heads: int, intermediate_size: int, max_position_embeddings: int,
                  bos_id: int, eos_id: int, pad_id: int):
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"arch must be one of {SUPPORTED_ARCHS}, got {arch!r}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} not divisible by num_heads {num_heads}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} not divisible by num_kv_heads {num_kv_heads}")
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        initializer_range=0.02,
        use_cache=True,
    )
    if arch == "qwen2":
        from transformers import Qwen2Config

        cfg = Qwen2Config(use_sliding_window=False, **common)
    elif arch == "qwen3":
        from transformers import Qwen3Config

        cfg = Qwen3Config(head_dim=hidden_size // num_heads, use_sliding_window=False, **common)
    else:
        from transformers import LlamaConfig

        cfg = LlamaConfig(head_dim=hidden_size // num_heads, **common)
    # Make sure the flag survives whatever the constructor does with it.
    cfg.tie_word_embeddings = True
    try:
        cfg.dtype = "float32"
    except Exception:  # pragma: no cover - older transformers
        cfg.torch_dtype = "float32"
    return cfg


def count_parameters(model) -> int:
    """Number of unique parameters (tied embeddings counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def build_tiny_model(
    out_dir: str | os.PathLike,
    *,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 768,
    max_position_embeddings: int = 512,
    seed: int = 0,
    arch: str = "qwen2",
    vocab_size: int = 352,
) -> Path:
    """Train the tokenizer, build a seeded fp32 model and save both into ``out_dir``.

    Writes directly into ``out_dir`` (created if needed); use :func:`ensure_tiny_model` for an
    idempotent, crash-safe build. Returns ``out_dir`` as a ``Path``. ``vocab_size`` is the BPE
    target (the trained vocabulary may come out a little smaller); the model's embedding size
    is the tokenizer's actual length.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tok = build_tokenizer(seed=seed, vocab_size=vocab_size)
    bos_id = tok.convert_tokens_to_ids(BOS_TOKEN)
    eos_id = tok.convert_tokens_to_ids(IM_END)
    pad_id = tok.convert_tokens_to_ids(PAD_TOKEN)
    cfg = _model_config(
        arch,
        vocab_size=len(tok),
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=pad_id,
    )

    # Seeded init without disturbing the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.tie_weights()
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id
    )

    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    _force_fast_tokenizer_class(out)
    (out / BUILD_INFO_FILE).write_text(
        json.dumps(
            dict(
                arch=arch, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                num_kv_heads=num_kv_heads, intermediate_size=intermediate_size,
                max_position_embeddings=max_position_embeddings, seed=seed, vocab_size=vocab_size,
                num_parameters=count_parameters(model), tokenizer_len=len(tok),
            ),
            indent=2,
        )
        + "\n"
    )
    return out


def _force_fast_tokenizer_class(out: Path) -> None:
    """Pin ``tokenizer_class`` so ``AutoTokenizer`` loads tokenizer.json as-is instead of a
    model-specific class (e.g. Qwen2Tokenizer) that rebuilds a different pre-tokenizer."""
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text()) if path.exists() else {}
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["padding_side"] = "left"
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def ensure_tiny_model(out_dir: str | os.PathLike, **kw: Any) -> Path:
    """Build the tiny model into ``out_dir`` unless ``out_dir/config.json`` already exists.

    The build goes to a temporary sibling directory that is renamed into place, so a crash
    never leaves half a model behind and concurrent callers are safe. If a model built by this
    module already exists and any of the given ``kw`` differ from its build arguments, raises
    ``ValueError`` (with no ``kw`` an existing model is accepted as is).
    """
    out = Path(out_dir)
    if (out / "config.json").exists():
        _check_build_info(out, kw)
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists, is not empty and has no config.json; refusing to overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        build_tiny_model(tmp, **kw)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        try:
            os.replace(tmp, out)  # atomic; succeeds onto a missing or empty directory
        except OSError:
            if (out / "config.json").exists():  # somebody else finished first
                _check_build_info(out, kw)
                return out
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_build_info(out: Path, kw: dict[str, Any]) -> None:
    info_path = out / BUILD_INFO_FILE
    if not info_path.exists() or not kw:
        return
    info = json.loads(info_path.read_text())
    diff = {k: (info.get(k), v) for k, v in kw.items() if k in info and info[k] != v}
    if diff:
        detail = ", ".join(f"{k}: existing={a!r} requested={b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"tiny model at {out} was built with different arguments ({detail}); "
                         f"use another directory or delete it")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlcore.tiny_model", description=__doc__.split("\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--num-kv-heads", type=int, default=2)
    p.add_argument("--intermediate-size", type=int, default=768)
    p.add_argument("--max-position-embeddings", type=int, default=512)
    p.add_argument("--vocab-size", type=int, default=352)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", choices=SUPPORTED_ARCHS, default="qwen2")
    p.add_argument("--force", action="store_true", help="rebuild even if OUT_DIR/config.json exists")
    a = p.parse_args(argv)
    kw = dict(
        hidden_size=a.hidden_size, num_layers=a.num_layers, num_heads=a.num_heads,
        num_kv_heads=a.num_kv_heads, intermediate_size=a.intermediate_size,
        max_position_embeddings=a.max_position_embeddings, seed=a.seed, arch=a.arch,
        vocab_size=a.vocab_size,
    )
    out = Path(a.out_dir)
    if a.force and out.exists():
        shutil.rmtree(out)
    try:
        path = ensure_tiny_model(out, **kw)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info_path = path / BUILD_INFO_FILE
    if info_path.exists():
        info = json.loads(info_path.read_text())
        n_params, vocab, arch = info["num_parameters"], info["tokenizer_len"], info["arch"]
    else:  # a model directory not built by this module
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path)
        n_params, vocab, arch = count_parameters(model), model.config.vocab_size, model.config.model_type
    print(f"{path}  params={n_params:,}  vocab={vocab}  arch={arch}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
