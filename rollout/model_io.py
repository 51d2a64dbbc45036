"""Loading a causal LM the same way everywhere, so a tiny local model and a hub model share a path."""
from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_attn_implementation(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def load_causal_lm(
    path: str,
    dtype: str = "float32",
    device: str = "cpu",
    attn_implementation: str = "auto",
    trust_remote_code: bool = False,
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=DTYPES[dtype],
        attn_implementation=pick_attn_implementation(attn_implementation, device),
        trust_remote_code=trust_remote_code,
    ).to(device)
    return model, tokenizer


def expected_weight_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Names/shapes a full weight push must carry (tied heads included, buffers excluded)."""
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters(remove_duplicate=False)}
    return shapes
