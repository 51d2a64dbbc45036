"""Loading a causal LM the same way everywhere, so a tiny local model and a hub model share a path."""
from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HALF = (torch.bfloat16, torch.float16)


def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def pick_attn_implementation(requested: str, device: str, dtype: str | torch.dtype = "float32") -> str:
    """`requested`, or for "auto": flash-attention 2 on CUDA when it is installed and the model
    computes in 16 bits (FA2 has no fp32 kernels), SDPA otherwise.

    `dtype` is the compute dtype (model.dtype), not the load dtype: the learner loads fp32
    master weights and computes in bf16/fp16 through FSDP's mixed-precision policy."""
    if requested != "auto":
        return requested
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if device.startswith("cuda") and dtype in _HALF and flash_attn_available():
        return "flash_attention_2"
    return "sdpa"


def load_causal_lm(
    path: str,
    dtype: str = "float32",
    device: str = "cpu",
    attn_implementation: str = "auto",
    trust_remote_code: bool = False,
    compute_dtype: str | None = None,
):
    """Model and tokenizer at `path`, weights in `dtype`. `compute_dtype` (default: `dtype`) is
    what the forward runs in, when a mixed-precision wrapper casts the weights (it picks the
    attention kernel)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=DTYPES[dtype],
        attn_implementation=pick_attn_implementation(attn_implementation, device, compute_dtype or dtype),
        trust_remote_code=trust_remote_code,
    ).to(device)
    return model, tokenizer


def expected_weight_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Names/shapes a full weight push must carry (tied heads included, buffers excluded)."""
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters(remove_duplicate=False)}
    return shapes
