"""`rlcore` command line: train (and resume) experiments, compare configs, build the tiny model."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    from rlcore.config import ConfigError, load_config
    from rlcore.data.loader import DataError
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
    trainer.run()
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
    if args.command == "build-tiny-model":
        from rlcore.tiny_model import main as tiny_main

        return tiny_main([args.out_dir])
    return 2


if __name__ == "__main__":
    sys.exit(main())
