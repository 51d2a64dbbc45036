"""How many SFT steps, at which learning rate and model size, does the tiny model need to learn
the tool format's copying (operands into ``print(...)``, interpreter output into ``\\boxed{}``)?

The tool experiment depends on it: a model that miscopies gets no reward with or without the
interpreter. Plain torch + transformers (no Ray, no vLLM), so it also runs on a GPU loan, where a
grid takes minutes. The score is teacher-forced: the fraction of held-out trajectories whose
every trained token is the argmax, which is what greedy decoding with a correct interpreter
output needs.

    python benchmarks/sft_copy_probe.py HIDDEN,LAYERS,LR,STEPS,BATCH [...] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlcore.config import DataConfig, SFTConfig  # noqa: E402
from rlcore.data.arith import ArithConfig, generate_problems  # noqa: E402
from rlcore.prompts import PromptRenderer  # noqa: E402
from rlcore.sft import sft_lr, sft_target  # noqa: E402
from rlcore.tiny_model import build_tiny_model  # noqa: E402


def _rows_to_tensors(rows, pad_id: int, device: str):
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros(len(rows), width)
    att = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (x, m) in enumerate(rows):
        ids[i, : len(x)], mask[i, : len(x)], att[i, : len(x)] = torch.tensor(x), torch.tensor(m), 1
    return ids.to(device), att.to(device), mask.to(device)


def probe(hidden: int, layers: int, lr: float, steps: int, batch_size: int, out: Path | None, seed: int = 0) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(Path(tmp) / "m", hidden_size=hidden, num_layers=layers,
                                intermediate_size=3 * hidden, seed=seed)
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    task = ArithConfig(min_operands=2, max_operands=3, max_operand=999, answer_format="tool")
    renderer = PromptRenderer(tok, DataConfig(task="arith", arith_answer_format="tool"))
    cache: dict[str, tuple[list[int], list[float]]] = {}

    def row(rec: dict):
        if rec["prompt"] not in cache:
            prompt = renderer.ids(rec)
            target, mask = sft_target(renderer, rec)
            cache[rec["prompt"]] = (prompt + target, [0.0] * len(prompt) + mask)
        return cache[rec["prompt"]]

    train = generate_problems(20000, seed, task)
    held_out = _rows_to_tensors([row(r) for r in generate_problems(200, seed + 1, task)], tok.pad_token_id, device)

    @torch.no_grad()
    def exact_fraction() -> float:
        model.eval()
        ids, att, mask = held_out
        pred = model(input_ids=ids, attention_mask=att).logits[:, :-1].argmax(-1)
        ok = ((pred == ids[:, 1:]) | (mask[:, 1:] == 0)).all(1).float().mean().item()
        model.train()
        return ok

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    t0 = time.perf_counter()
    history = []
    schedule = SimpleNamespace(sft=SFTConfig(steps=steps, batch_size=batch_size, lr=lr))  # the trainer's warm-up
    name = f"probe_{hidden}_{layers}_{lr}_{batch_size}.json"
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = sft_lr(step - 1, schedule)
        ids, att, mask = _rows_to_tensors([row(r) for r in rng.sample(train, batch_size)], tok.pad_token_id, device)
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
        loss = -(logp * mask[:, 1:]).sum() / mask[:, 1:].sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % max(1, steps // 10) == 0 or step == steps:
            history.append([step, round(loss.item(), 3), round(exact_fraction(), 3), round(time.perf_counter() - t0)])
            if out is not None:  # partial results survive a time limit
                (out / name).write_text(json.dumps(history))
    result = {"hidden": hidden, "layers": layers, "lr": lr, "steps": steps, "bs": batch_size, "fmt": "tool",
              "hist": history, "s": round(time.perf_counter() - t0, 1)}
    if out is not None:
        (out / name).write_text(json.dumps(result))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("specs", nargs="+", help="HIDDEN,LAYERS,LR,STEPS,BATCH")
    p.add_argument("--out", default="")
    a = p.parse_args()
    out = Path(a.out) if a.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    for spec in a.specs:
        h, l, lr, steps, bs = spec.split(",")
        print(json.dumps(probe(int(h), int(l), float(lr), int(steps), int(bs), out)), flush=True)


if __name__ == "__main__":
    main()
