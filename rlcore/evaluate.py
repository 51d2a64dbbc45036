"""Benchmark evaluation: n seeded samples per problem, scored by the reward pool, summarised.

One code path serves ``rlcore eval`` (an engine in this process) and evaluation inside training
(the trainer's rollout group and reward pool): :func:`run_benchmarks` only needs a ``generate``
function and a ``score_for(reward_name)`` function. Metric definitions are in
:mod:`rlcore.eval_metrics`.
"""
from __future__ import annotations

import dataclasses
import json
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rlcore.config import DataConfig
from rlcore.data.benchmarks import Benchmark, load_benchmark, pick_reward
from rlcore.eval_metrics import answer_key, default_ks, summarize
from rlcore.prompts import PromptRenderer
from rlcore.sampling import is_accepted
from rollout.engine import request_seed

__all__ = ["EvalSettings", "resolve_model_path", "run_benchmarks", "flat_metrics", "write_report",
           "markdown_table", "evaluate_model"]


@dataclass
class EvalSettings:
    n: int = 1  # samples per problem
    temperature: float = 0.6
    top_p: float = 1.0
    max_new_tokens: int = 1024
    ks: list[int] = field(default_factory=list)  # pass@k / maj@k; [] = 1, 2, 4, ... n
    limit: int = 0  # first N problems of each benchmark (0 = all)
    seed: int = 0
    max_prompt_tokens: int = 0  # prompts longer than this are skipped and counted (0 = no limit)
    reward: str = ""  # "" = each benchmark's default reward
    data_dir: str = ""  # "" = the shipped benchmarks directory
    prompt_template: str = ""  # "" = the benchmark's ("{prompt}\n\n{instruction}")
    instruction: str | None = None  # None = the benchmark's answer-format instruction


def sample_seed(seed: int, bench: str, problem: int, sample: int) -> int:
    """Seed of one sample: reproducible whatever the batching, worker count or --limit."""
    return request_seed(seed, zlib.crc32(bench.encode()), problem, sample)


def resolve_model_path(path: str) -> str:
    """An HF model directory, a checkpoint (``step_N`` -> its ``model/``), a run directory (its latest
    checkpoint's ``model/``) or, when no such path exists, a hub id passed through unchanged."""
    from rlcore import checkpoint as ckpt

    p = Path(path)
    if (p / "config.json").is_file():
        return str(p)
    if (p / "model" / "config.json").is_file():
        return str(p / "model")
    run_dir = p.parent if p.name == "checkpoints" else p
    if (run_dir / "checkpoints").is_dir():
        found = [c for c in ckpt.list_checkpoints(run_dir) if (c / "model" / "config.json").is_file()]
        if not found:
            raise FileNotFoundError(f"{run_dir}/checkpoints: no complete checkpoint with a model/ directory")
        return str(found[-1] / "model")
    if not p.exists() and not str(path).startswith((".", "/", "~")) and str(path).count("/") == 1:
        return str(path)  # hub id ("org/name"): transformers / vLLM fetch it (needs network)
    raise FileNotFoundError(f"{path}: not a model directory (config.json), a checkpoint (model/config.json), "
                            "a run directory (checkpoints/step_N/model) or a hub id")


def _renderer(tokenizer, data: DataConfig, bench: Benchmark, s: EvalSettings) -> PromptRenderer:
    instruction = bench.instruction if s.instruction is None else s.instruction
    data = dataclasses.replace(data, prompt_template=s.prompt_template or bench.prompt_template, instruction=instruction)
    return PromptRenderer(tokenizer, data)


def _extracted(info: dict, text: str, answer_format: str):
    """The answer a sample gave: the reward's ``extracted`` when it reports one, else the last box
    (for gsm8k also the text after the last '####')."""
    if "extracted" in info:
        return info["extracted"]
    from rewards.math_answer import extract_boxed

    boxed = extract_boxed(text)
    if boxed is None and answer_format == "gsm8k" and "####" in text:
        return text.rsplit("####", 1)[1].strip().split("\n")[0].strip() or None
    return boxed


def run_benchmarks(
    benchmarks: list[Benchmark],
    *,
    tokenizer,
    generate: Callable,
    score_for: Callable[[str], Callable],
    settings: EvalSettings,
    data: DataConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[dict, dict]:
    """Evaluate each benchmark; returns ({name: metrics}, {name: per-sample rows}).

    ``generate(requests, sampling) -> completions`` (one per request, in order);
    ``score_for(reward_name) -> fn(list[RewardInput]) -> list[RewardResult]``. ``data`` supplies the
    system prompt and chat-template choice (the benchmark supplies template and instruction).
    """
    from rewards import RewardInput
    from rollout.engine import Request, SamplingConfig

    s = settings
    data = data or DataConfig()
    ks = s.ks or default_ks(s.n)
    results, samples = {}, {}
    for bench in benchmarks:
        t0 = time.perf_counter()
        records = load_benchmark(bench, s.limit, s.data_dir or None)
        renderer = _renderer(tokenizer, data, bench, s)
        kept, prompt_ids = [], []
        for index, rec in enumerate(records):
            ids = renderer.ids(rec)
            if s.max_prompt_tokens and len(ids) > s.max_prompt_tokens:
                continue
            kept.append((index, rec))
            prompt_ids.append(ids)
        skipped = len(records) - len(kept)
        if skipped and log:
            log(f"{bench.name}: skipped {skipped} of {len(records)} problems whose prompt is longer than "
                f"{s.max_prompt_tokens} tokens (max model length minus max new tokens)")
        if not kept:
            results[bench.name] = {"num_problems": 0, "num_skipped_too_long": skipped}
            samples[bench.name] = []
            continue
        requests = [Request(ids, sample_seed(s.seed, bench.name, index, j))
                    for (index, _), ids in zip(kept, prompt_ids) for j in range(s.n)]
        sampling = SamplingConfig(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                                  stop_token_ids=[t for t in [tokenizer.eos_token_id] if t is not None])
        completions = generate(requests, sampling)
        t_gen = time.perf_counter() - t0
        texts = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in completions]
        reward = pick_reward(bench, s.reward)
        owners = [rec for _, rec in kept for _ in range(s.n)]  # request i belongs to problem i // n
        items = [RewardInput(prompt=rec["prompt"], completion=text, ground_truth=str(rec["answer"]),
                             metadata=rec["metadata"]) for rec, text in zip(owners, texts)]
        scored = score_for(reward)(items)
        problems, rows = [], []
        for p, (index, rec) in enumerate(kept):
            part = range(p * s.n, (p + 1) * s.n)
            answers = [_extracted(scored[i].info or {}, texts[i], bench.answer_format) for i in part]
            problems.append({
                "correct": [is_accepted(scored[i]) for i in part],
                "keys": [answer_key(a) for a in answers],
                "lengths": [completions[i].length for i in part],
                "truncated": [completions[i].finish_reason == "length" for i in part],
                "group": rec.get("group"),
            })
            for j, i in enumerate(part):
                rows.append({"id": rec["id"], "sample": j, "answer": rec["answer"], "extracted": answers[j],
                             "correct": problems[-1]["correct"][j], "score": scored[i].score,
                             "failed": scored[i].failed, "length": completions[i].length,
                             "finish_reason": completions[i].finish_reason, "completion": texts[i]})
        metrics = summarize(problems, ks)
        metrics.update(num_skipped_too_long=skipped, reward=reward, reward_failures=sum(r.failed for r in scored),
                       generate_s=round(t_gen, 3), time_s=round(time.perf_counter() - t0, 3),
                       example_prompt=renderer.text(kept[0][1]))
        results[bench.name] = metrics
        samples[bench.name] = rows
    return results, samples


def flat_metrics(results: dict, prefix: str = "eval") -> dict:
    """Scalars for a metrics log: ``eval/<bench>/accuracy``, ``.../pass@k``, ``.../maj@k``, ..."""
    out: dict = {}
    for name, m in results.items():
        base = f"{prefix}/{name}"
        out[f"{base}/num_problems"] = m.get("num_problems", 0)
        if not m.get("num_problems"):
            continue
        out[f"{base}/accuracy"] = m["accuracy"]
        if m.get("accuracy_ci95"):
            out[f"{base}/accuracy_ci95_low"], out[f"{base}/accuracy_ci95_high"] = m["accuracy_ci95"]
        for kind in ("pass@k", "maj@k"):
            for k, v in m[kind].items():
                out[f"{base}/{kind[:-1]}{k}"] = v
        out[f"{base}/response_length_mean"] = m["response_length_mean"]
        out[f"{base}/truncated_frac"] = m["truncated_frac"]
    return out


def markdown_table(results: dict) -> str:
    """One row per benchmark: accuracy with its 95% CI, pass@k, maj@k, mean response length."""
    ks = sorted({int(k) for m in results.values() for k in m.get("pass@k", {})})
    head = ["benchmark", "problems", "n", "accuracy (95% CI)"] + [f"pass@{k}" for k in ks] + \
        [f"maj@{k}" for k in ks] + ["mean length (tokens)", "truncated"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in results.items():
        if not m.get("num_problems"):
            lines.append(f"| {name} | 0 | " + " | ".join("-" * 1 for _ in head[2:]) + " |")
            continue
        ci = m["accuracy_ci95"]
        acc = f"{m['accuracy']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        cells = [name, str(m["num_problems"]), str(m["n"]), acc]
        cells += [f"{m['pass@k'][str(k)]:.3f}" if str(k) in m["pass@k"] else "-" for k in ks]
        cells += [f"{m['maj@k'][str(k)]:.3f}" if str(k) in m["maj@k"] else "-" for k in ks]
        cells += [f"{m['response_length_mean']:.1f}", f"{m['truncated_frac']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


DEFINITIONS = {
    "accuracy": "mean over problems of per-problem accuracy (correct samples / n)",
    "accuracy_ci95": "mean ± 1.96 * SE over problems (SE = std of per-problem accuracy, ddof=1, / sqrt(problems)), clipped to [0, 1]",
    "pass@k": "unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al. 2021), averaged over problems",
    "maj@k": "majority vote over extracted answers of k samples; ties score the fraction of tied answers that is correct; "
             "k < n: mean over the n // k disjoint blocks of k consecutive samples",
    "response_length_mean": "mean generated tokens per sample (including the stop token)",
}


def write_report(out_dir: str | Path, results: dict, samples: dict, meta: dict) -> Path:
    """eval.json (metrics, settings, definitions), eval.md (the table) and samples/<bench>.jsonl."""
    out = Path(out_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    doc = {**meta, "definitions": DEFINITIONS, "benchmarks": results}
    (out / "eval.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    title = f"# Evaluation of `{meta.get('model', '?')}`\n\n"
    settings = meta.get("settings", {})
    note = (f"n={settings.get('n')} samples per problem, temperature {settings.get('temperature')}, "
            f"max {settings.get('max_new_tokens')} new tokens. Accuracy: mean over problems, 95% CI over problems.\n\n")
    (out / "eval.md").write_text(title + note + markdown_table(results))
    for name, rows in samples.items():
        with (out / "samples" / f"{name}.jsonl").open("w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def evaluate_model(
    model: str,
    benchmarks: list[Benchmark],
    settings: EvalSettings,
    *,
    out_dir: str | Path | None = None,
    engine: str = "vllm",
    dtype: str = "",
    max_model_len: int = 0,
    gpu_memory_utilization: float = 0.9,
    tensor_parallel_size: int = 1,
    data: DataConfig | None = None,
    reward_workers: int = 2,
    reward_timeout_s: float = 10.0,
    log: Callable[[str], None] = print,
) -> dict:
    """``rlcore eval``: one engine in this process (no Ray), a reward pool per reward used."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from rewards import RewardPool
    from rollout.worker import make_engine

    t0 = time.perf_counter()
    path = resolve_model_path(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    context = max_model_len or int(getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", 0) or 0)
    if context and not settings.max_prompt_tokens:
        if context <= settings.max_new_tokens:
            raise ValueError(f"max new tokens ({settings.max_new_tokens}) leave no room for a prompt in the "
                             f"model's context of {context} tokens")
        settings.max_prompt_tokens = context - settings.max_new_tokens
    cuda = torch.cuda.is_available()
    kw: dict = {"dtype": dtype or ("bfloat16" if cuda else "float32"), "seed": settings.seed}
    if engine == "vllm":
        kw.update(max_model_len=max_model_len or None, gpu_memory_utilization=gpu_memory_utilization,
                  tensor_parallel_size=tensor_parallel_size, enforce_eager=not cuda)
    # Reward workers start now (spawned, non-blocking), so their start-up overlaps the model load.
    pools = {name: RewardPool(name, num_workers=reward_workers, timeout_s=reward_timeout_s)
             for name in dict.fromkeys(pick_reward(b, settings.reward) for b in benchmarks)}
    eng = None
    try:
        eng = make_engine(engine, path, **kw)
        log(f"[rlcore eval] {path} ({engine}, {kw['dtype']}): {', '.join(b.name for b in benchmarks)}, "
            f"n={settings.n}, temperature={settings.temperature}")
        results, samples = run_benchmarks(
            benchmarks, tokenizer=tokenizer, generate=eng.generate, score_for=lambda name: pools[name].score,
            settings=settings, data=data, log=log,
        )
    finally:
        for pool in pools.values():
            pool.close()
        if eng is not None:
            eng.shutdown()
    meta = {
        "model": str(model), "model_path": path, "engine": engine, "dtype": kw["dtype"],
        "settings": dataclasses.asdict(settings), "wall_time_s": round(time.perf_counter() - t0, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if out_dir is not None:
        write_report(out_dir, results, samples, meta)
        log(f"[rlcore eval] wrote {Path(out_dir) / 'eval.json'} and eval.md")
    log(markdown_table(results))
    return {**meta, "benchmarks": results}


def trainer_benchmarks(trainer) -> tuple[dict, dict]:
    """Benchmarks inside training (``eval.benchmarks``): the trainer's rollout group and, when the
    benchmark's reward is the training reward, its reward pool. Returns (flat metrics, results)."""
    from rewards import RewardPool
    from rlcore.data.benchmarks import parse_benchmark_list

    cfg, ec = trainer.cfg, trainer.cfg.eval
    s = EvalSettings(
        n=ec.benchmark_n, temperature=ec.benchmark_temperature, top_p=cfg.rollout.top_p,
        max_new_tokens=ec.benchmark_max_new_tokens or cfg.rollout.max_new_tokens, ks=list(ec.benchmark_k),
        limit=ec.benchmark_limit, seed=cfg.seed, reward=ec.benchmark_reward, data_dir=ec.benchmark_data_dir,
        prompt_template=ec.benchmark_prompt_template,
    )
    s.max_prompt_tokens = max(1, cfg.rollout.max_model_len - s.max_new_tokens)
    own = trainer.reward if isinstance(trainer.reward, str) else None
    extra: dict = {}

    def score_for(name: str):
        if name == own:
            return trainer.pool.score
        if name not in extra:  # another reward than training's: a short-lived pool of its own
            rc = cfg.reward
            extra[name] = RewardPool(name, num_workers=rc.num_workers, timeout_s=rc.timeout_s,
                                     failure_score=rc.failure_score)
        return extra[name].score

    progress = getattr(trainer, "progress", None)
    try:
        results, _ = run_benchmarks(
            parse_benchmark_list(ec.benchmarks), tokenizer=trainer.tokenizer, generate=trainer.rollout.generate,
            score_for=score_for, settings=s, data=cfg.data, log=progress.note if progress else None,
        )
    finally:
        for pool in extra.values():
            pool.close()
    out = Path(trainer.run_dir) / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"step_{trainer.step}.json").write_text(json.dumps(
        {"step": trainer.step, "settings": dataclasses.asdict(s), "benchmarks": results}, indent=2) + "\n")
    return flat_metrics(results), results
