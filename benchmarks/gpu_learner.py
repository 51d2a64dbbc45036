"""The learner's CUDA path without Ray or vLLM: NCCL process group, bf16 mixed precision, the
attention kernel choice, DCP checkpoint round trip, weight gather, HF generation and PPO's critic
on the GPU.

A GPU machine here has torch and transformers but neither Ray nor vLLM, so this drives one
`LearnerWorker` in-process (world size 1) the way the learner group drives each rank. It also
runs on CPU (gloo), which is how the test suite keeps it working between GPU loans.

    python benchmarks/gpu_learner.py --out results/ [--dtype bfloat16] [--throughput]

Prints one JSON object per check and writes them all to OUT/gpu_learner_<dtype>.json.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlcore.batch import build_batch  # noqa: E402
from rlcore.config import load_config  # noqa: E402
from rlcore.critic import CriticWorker  # noqa: E402
from rlcore.data.arith import ArithConfig, generate_problems  # noqa: E402
from rlcore.learner import LearnerWorker  # noqa: E402
from rlcore.prompts import PromptRenderer  # noqa: E402
from rlcore.tiny_model import build_tiny_model  # noqa: E402
from rlcore.update import UpdateSettings  # noqa: E402
from rollout.engine import Request, SamplingConfig  # noqa: E402
from rollout.hf_engine import HFEngine  # noqa: E402
from rollout.model_io import load_causal_lm, pick_attn_implementation  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sft_batches(renderer: PromptRenderer, pad_id: int, steps: int, batch_size: int, seed: int):
    records = generate_problems(steps * batch_size, seed, ArithConfig(max_operand=99, answer_format="boxed"))
    for k in range(steps):
        part = records[k * batch_size : (k + 1) * batch_size]
        yield build_batch([renderer.ids(r) for r in part], [renderer.sft_target_ids(r) for r in part], pad_id)


def _policy_batch(batch: dict, learner: LearnerWorker, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out = dict(batch)
    out["old_logp"] = learner.compute_logprobs(batch)
    adv = rng.standard_normal(len(batch["input_ids"])).astype(np.float32)
    out["advantages"] = adv[:, None] * batch["loss_mask"]
    return out


def _max_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float((np.abs(a - b) * mask).max())


GRPO_STEP = UpdateSettings(lr=1e-4)  # the loss (GRPO, clip 0.2) is the learner config's


def run_checks(work: Path, dtype: str, sft_steps: int, device_hint: str) -> dict:
    """Every check on one tiny model built under `work` (a scratch directory)."""
    model_dir = build_tiny_model(work / "tiny", seed=0)
    gpus = 1 if (device_hint != "cpu" and torch.cuda.is_available()) else 0
    config = load_config(None, [
        f"model.path={model_dir}", f"model.dtype={dtype}", f"learner.gpus_per_rank={gpus}",
        "learner.micro_batch_size=32", "learner.num_threads=2",
    ])
    cfg = config.to_dict()
    results: dict = {"dtype": dtype, "torch": torch.__version__}
    import transformers

    results["transformers"] = transformers.__version__
    learner = LearnerWorker(0, 1, "127.0.0.1", _free_port(), cfg)
    import torch.distributed as dist

    results["device"] = str(learner.device)
    results["device_name"] = torch.cuda.get_device_name(0) if learner.device.type == "cuda" else "cpu"
    results["backend"] = dist.get_backend()
    results["attn_implementation"] = learner.model.config._attn_implementation
    results["attn_auto_pick"] = pick_attn_implementation("auto", str(learner.device))
    results["param_dtype_in_forward"] = str(next(learner.model.parameters()).dtype)  # fp32 masters

    renderer = PromptRenderer(learner.tokenizer, config.data)
    pad_id = learner.tokenizer.pad_token_id
    # 1. SFT learns (loss falls) under this dtype.
    nll = []
    t0 = time.perf_counter()
    batches = list(_sft_batches(renderer, pad_id, sft_steps + 2, 64, seed=0))
    for k, batch in enumerate(batches[:sft_steps]):
        lr = 2e-3 * min(1.0, (k + 1) / 10)
        nll.append(learner.train(batch, "sft", UpdateSettings(lr=lr))["train/nll"])
    results["sft"] = {"steps": sft_steps, "nll_first": nll[0], "nll_last": nll[-1],
                      "seconds": time.perf_counter() - t0}

    # 2. Compute-dtype gap: learner (sharded, `dtype` compute) vs a plain fp32 copy of its weights.
    hf_dir = work / "hf"
    learner.save_hf_model(str(hf_dir))
    probe = batches[sft_steps]
    ours = learner.compute_logprobs(probe)
    ref_model, _ = load_causal_lm(str(hf_dir), "float32", str(learner.device), "sdpa")
    with torch.no_grad():
        ids = torch.from_numpy(probe["input_ids"]).to(learner.device)
        att = torch.from_numpy(probe["attention_mask"]).to(learner.device)
        logits = ref_model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
        ref = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
        ref = (ref * att[:, 1:]).cpu().numpy()
    mask = probe["attention_mask"][:, 1:]
    results["logprob_gap_vs_fp32"] = {"max": _max_diff(ours, ref, mask),
                                      "mean": float((np.abs(ours - ref) * mask).sum() / mask.sum())}

    # 3. Gathered weights are full fp32 tensors that reproduce the sharded model exactly in fp32.
    weights = learner.gather_weights()
    results["gather"] = {"tensors": len(weights), "dtypes": sorted({str(v.dtype) for v in weights.values()}),
                         "params": int(sum(v.size for v in weights.values()))}
    sd = ref_model.state_dict()
    results["gather"]["max_abs_diff_vs_saved"] = max(
        float(np.abs(weights[k] - sd[k].float().cpu().numpy()).max()) for k in weights if k in sd
    )

    # 4. DCP round trip: save, take a GRPO step, reload, take the same step: same result.
    ckpt = work / "ckpt"
    learner.save_checkpoint(str(ckpt))
    policy = _policy_batch(batches[sft_steps + 1], learner, seed=1)
    m1 = learner.train(policy, "policy", GRPO_STEP)
    after_1 = learner.compute_logprobs(probe)
    learner.load_checkpoint(str(ckpt))
    restored = learner.compute_logprobs(probe)
    m2 = learner.train(policy, "policy", GRPO_STEP)
    after_2 = learner.compute_logprobs(probe)
    results["checkpoint"] = {
        "restored_vs_saved_max": _max_diff(restored, ours, mask),
        "step_after_restore_vs_first_max": _max_diff(after_1, after_2, mask),
        "step_moved_max": _max_diff(after_1, ours, mask),
        "loss_first": m1["train/loss"], "loss_again": m2["train/loss"],
        "grad_norm_first": m1["train/grad_norm"], "grad_norm_again": m2["train/grad_norm"],
    }

    # 5. Rollout side on the same device: HF generate in `dtype`, then score its tokens both ways.
    engine = HFEngine(str(hf_dir), dtype=dtype, device=str(learner.device))
    engine.load_weights(learner.gather_weights())
    prompts = [renderer.ids(r) for r in generate_problems(16, 5, ArithConfig(max_operand=99))]
    comps = engine.generate([Request(p, seed=i) for i, p in enumerate(prompts)],
                            SamplingConfig(max_new_tokens=16, temperature=1.0))
    seqs = [p + c.token_ids for p, c in zip(prompts, comps)]
    learner_lp = learner.sequence_logprobs(seqs)
    gaps = [abs(a - b) for p, c, lp in zip(prompts, comps, learner_lp)
            for a, b in zip(c.logprobs, lp[len(p) - 1 :])]
    results["rollout_vs_learner_logprob"] = {"tokens": len(gaps), "max": max(gaps), "mean": float(np.mean(gaps))}
    if learner.device.type == "cuda":
        results["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    learner.shutdown()

    # 6. PPO's critic (its own process group) fits outcome returns under the same dtype.
    critic = CriticWorker(0, 1, "127.0.0.1", _free_port(), {**cfg, "critic": {**cfg["critic"], "value_clip": None}})
    values = probe | {"old_values": critic.compute_values(probe)}
    outcome = np.random.default_rng(2).integers(0, 2, len(probe["input_ids"])).astype(np.float32)
    values["returns"] = outcome[:, None] * probe["loss_mask"]
    losses = [critic.train_values(values, UpdateSettings(lr=config.critic.lr))["critic/vf_loss"] for _ in range(20)]
    results["critic"] = {"device": str(critic.device), "vf_loss_first": losses[0], "vf_loss_last": losses[-1]}
    critic.shutdown()
    return results


def throughput(work: Path, dtype: str, hidden: int, layers: int, seq_len: int, batch: int, steps: int) -> dict:
    """Train-step tokens/s of a mid-size Qwen2 (random weights) through the same LearnerWorker."""
    model_dir = build_tiny_model(work / "m", hidden_size=hidden, num_layers=layers, num_heads=hidden // 64,
                                 intermediate_size=hidden * 3, max_position_embeddings=2 * seq_len, seed=0)
    gpus = 1 if torch.cuda.is_available() else 0
    if gpus:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # several dtypes run in one process
    cfg = load_config(None, [f"model.path={model_dir}", f"model.dtype={dtype}", f"learner.gpus_per_rank={gpus}",
                             f"learner.micro_batch_size={batch}", "model.attn_implementation=sdpa"]).to_dict()
    learner = LearnerWorker(0, 1, "127.0.0.1", _free_port(), cfg)
    params = sum(p.numel() for p in learner.model.parameters())
    rng = np.random.default_rng(0)
    vocab = learner.model.config.vocab_size
    ids = rng.integers(4, vocab, size=(batch, seq_len)).astype(np.int64)
    b = {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": np.ones((batch, seq_len - 1), np.float32)}
    learner.train(b, "sft", {"lr": 1e-5})  # warm-up (allocator, kernels)
    if learner.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        learner.train(b, "sft", {"lr": 1e-5})
    if learner.device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    out = {"dtype": dtype, "params_m": params / 1e6, "tokens_per_step": batch * seq_len,
           "step_s": dt, "tokens_per_s": batch * seq_len / dt}
    if learner.device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    learner.shutdown()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="results")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--sft-steps", type=int, default=60)
    p.add_argument("--device", default="auto", choices=["auto", "cpu"])
    p.add_argument("--throughput", action="store_true",
                   help="instead: train-step throughput of a ~80M model, float32 baseline then --dtype, with the ratio")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--seq-len", type=int, default=1024)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu_learner_") as tmp:
        if a.throughput:
            runs = [throughput(Path(tmp) / d, d, a.hidden, a.layers, seq_len=a.seq_len, batch=16, steps=5)
                    for d in ("float32", a.dtype)]
            res = {"baseline": runs[0], "measured": runs[1],
                   "speedup_vs_float32": runs[0]["step_s"] / runs[1]["step_s"]}
            name = f"gpu_throughput_{a.dtype}_vs_float32.json"
        else:
            res = run_checks(Path(tmp), a.dtype, a.sft_steps, a.device)
            name = f"gpu_learner_{a.dtype}.json"
    print(json.dumps(res, indent=1))
    (out / name).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
