"""`rlcore compare SPEC.yaml`: run several configs with the same seeds, data and sample budget.

A fair comparison needs every run to start from the same policy, see the same prompts and spend
the same number of generated samples; the spec states that once and this module expands it into
one `rlcore.train` call per (config, seed), then writes report.md / report.png / report.json.
"""
from __future__ import annotations

import json
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SHARED = "_shared_start"  # run name of the shared warm-up; "-sN" suffixes keep it distinct
BIG_STEPS = 100000  # with a sample budget the budget, not the step count, ends a run
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TOP_KEYS = {"name", "output_dir", "base", "overrides", "seeds", "budget_samples", "target_accuracy",
             "metric", "shared_start", "runs"}
_RUN_KEYS = {"name", "overrides", "base"}


class SpecError(ValueError):
    """A problem with the compare spec, naming the file and the key."""


@dataclass
class RunSpec:
    name: str
    overrides: list[str] = field(default_factory=list)
    base: str | None = None  # this run's own experiment config (e.g. a different SFT format)


@dataclass
class CompareSpec:
    name: str
    base: str  # resolved path of the experiment config every run starts from
    runs: list[RunSpec]
    output_dir: str = "runs"
    overrides: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    budget_samples: int | None = None
    target_accuracy: float | None = None
    metric: str = "eval/accuracy"
    shared_start: bool = True
    source: str = "<spec>"

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def runs_dir(self) -> Path:
        return self.out_dir / "runs"


# ------------------------------------------------------------------------------------ spec


def load_spec(path: str | Path) -> CompareSpec:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SpecError(f"{path}: cannot read spec: {e}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: invalid YAML: {e}") from None
    return parse_spec(data, str(path), spec_dir=path.parent)


def parse_spec(data: Any, source: str = "<spec>", spec_dir: Path | None = None) -> CompareSpec:
    """Validate the raw YAML; every error names the offending key."""

    def fail(key: str, msg: str) -> SpecError:
        return SpecError(f"{source}: {key}: {msg}")

    if not isinstance(data, dict):
        raise SpecError(f"{source}: top level must be a mapping")
    unknown = sorted(set(map(str, data)) - _TOP_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key (known keys: {', '.join(sorted(_TOP_KEYS))})")
    for key in ("name", "base", "runs"):
        if key not in data:
            raise fail(key, "required")
    name = _str(data["name"], "name", fail)
    if not _NAME_RE.match(name):
        raise fail("name", f"must be a plain directory name, got {name!r}")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise fail("seeds", f"expected a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise fail("seeds", "duplicate seeds")
    budget = data.get("budget_samples")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0):
        raise fail("budget_samples", f"expected a positive integer, got {budget!r}")
    target = data.get("target_accuracy")
    if target is not None:
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 <= target <= 1:
            raise fail("target_accuracy", f"expected a number in [0, 1], got {target!r}")
        target = float(target)
    shared = data.get("shared_start", True)
    if not isinstance(shared, bool):
        raise fail("shared_start", f"expected true or false, got {shared!r}")
    runs_raw = data["runs"]
    if not isinstance(runs_raw, list) or not runs_raw:
        raise fail("runs", "expected a non-empty list of {name, overrides}")
    runs: list[RunSpec] = []
    for i, item in enumerate(runs_raw):
        key = f"runs[{i}]"
        if not isinstance(item, dict):
            raise fail(key, f"expected a mapping with name and overrides, got {item!r}")
        bad = sorted(set(map(str, item)) - _RUN_KEYS)
        if bad:
            raise fail(f"{key}.{bad[0]}", "unknown key (known keys: base, name, overrides)")
        if "name" not in item:
            raise fail(f"{key}.name", "required")
        run_name = _str(item["name"], f"{key}.name", fail)
        if not _NAME_RE.match(run_name):
            raise fail(f"{key}.name", f"must be a plain directory name, got {run_name!r}")
        if run_name in {r.name for r in runs}:
            raise fail(f"{key}.name", f"duplicate run name {run_name!r}")
        run_base = None
        if "base" in item:
            run_base = _resolve_base(_str(item["base"], f"{key}.base", fail), spec_dir, fail)
        runs.append(RunSpec(run_name, to_overrides(item.get("overrides"), f"{key}.overrides", fail), run_base))
    return CompareSpec(
        name=name, base=_resolve_base(_str(data["base"], "base", fail), spec_dir, fail), runs=runs,
        output_dir=_str(data.get("output_dir", "runs"), "output_dir", fail),
        overrides=to_overrides(data.get("overrides"), "overrides", fail), seeds=seeds,
        budget_samples=budget, target_accuracy=target,
        metric=_str(data.get("metric", "eval/accuracy"), "metric", fail), shared_start=shared, source=source,
    )


def to_overrides(value: Any, key: str, fail=None) -> list[str]:
    """A list of "k=v" strings or a (nested) mapping -> "k=v" strings that load_config parses back."""
    fail = fail or (lambda k, msg: SpecError(f"{k}: {msg}"))
    if value is None:
        return []
    if isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, str) or "=" not in item or item.startswith("="):
                raise fail(f"{key}[{i}]", f"expected 'key.sub=value', got {item!r}")
        return list(value)
    if isinstance(value, dict):
        return [f"{k}={_yaml_value(v)}" for k, v in _flatten(value, "")]
    raise fail(key, f"expected a list of 'key=value' or a mapping, got {value!r}")


def _flatten(mapping: dict, prefix: str):
    for k, v in mapping.items():
        if isinstance(v, dict) and v:
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _yaml_value(v: Any) -> str:
    """Render so that yaml.safe_load gives `v` back (a string "1" stays a string)."""
    if isinstance(v, str) and v != "" and yaml.safe_load(v) == v:
        return v
    return json.dumps(v)  # JSON is YAML: numbers, bools, null, lists, quoted strings


def _str(value: Any, key: str, fail) -> str:
    if not isinstance(value, str) or not value:
        raise fail(key, f"expected a non-empty string, got {value!r}")
    return value


def _resolve_base(base: str, spec_dir: Path | None, fail) -> str:
    candidates = ([spec_dir / base] if spec_dir is not None else []) + [Path(base)]
    for cand in candidates:
        if cand.is_file():
            return str(cand)
    raise fail("base", f"{base} not found (looked in {', '.join(str(c) for c in candidates)})")


# -------------------------------------------------------------------------------- overrides


def budget_overrides(spec: CompareSpec) -> list[str]:
    if spec.budget_samples is None:
        return []
    return [f"trainer.max_samples={spec.budget_samples}", f"trainer.total_steps={BIG_STEPS}"]


def shared_model_path(spec: CompareSpec) -> Path:
    """The step-0 checkpoint's HF model dir; absolute so Ray workers find it from any cwd."""
    return (spec.runs_dir / SHARED / "checkpoints" / "step_0" / "model").resolve()


def shared_start_overrides(spec: CompareSpec) -> list[str]:
    """Build/SFT the model once and evaluate it; total_steps=0 saves checkpoints/step_0."""
    return [*spec.overrides, f"name={SHARED}", f"output_dir={spec.runs_dir}", f"seed={spec.seeds[0]}",
            "overwrite=true", "trainer.total_steps=0"]


def run_overrides(spec: CompareSpec, run: RunSpec, seed: int) -> list[str]:
    """Base, then shared start (before the run's own so a run may add e.g. more SFT), then run, then fixed."""
    shared = []
    if spec.shared_start:
        shared = [f"model.path={shared_model_path(spec)}", "model.build_tiny=false", "sft.steps=0"]
    return [*spec.overrides, *shared, *run.overrides, f"name={run_id(run.name, seed)}",
            f"output_dir={spec.runs_dir}", f"seed={seed}", "overwrite=true", *budget_overrides(spec)]


def run_id(name: str, seed: int) -> str:
    return f"{name}-s{seed}"


def select_runs(spec: CompareSpec, only: list[str] | None) -> list[RunSpec]:
    if not only:
        return list(spec.runs)
    known = {r.name for r in spec.runs}
    missing = [n for n in only if n not in known]
    if missing:
        raise SpecError(f"--only: unknown run {', '.join(missing)} (spec has {', '.join(sorted(known))})")
    return [r for r in spec.runs if r.name in only]


def check_configs(spec: CompareSpec, runs: list[RunSpec]) -> None:
    """Resolve every run's config before training anything: a typo in run 5 costs a second, not 4 runs."""
    from rlcore.config import ConfigError, load_config

    jobs = [(SHARED, spec.base, shared_start_overrides(spec))] if spec.shared_start else []
    jobs += [(run_id(r.name, s), r.base or spec.base, run_overrides(spec, r, s)) for r in runs for s in spec.seeds]
    for rid, base, overrides in jobs:
        try:
            load_config(base, overrides)
        except ConfigError as e:
            raise SpecError(f"run {rid}: {e}") from None


# ---------------------------------------------------------------------------------- driver


def read_statuses(spec: CompareSpec) -> dict:
    """status.json remembers failures (and their reasons) for --report-only."""
    path = spec.out_dir / "status.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_statuses(spec: CompareSpec, statuses: dict) -> None:
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    (spec.out_dir / "status.json").write_text(json.dumps(statuses, indent=2, sort_keys=True))


def is_done(spec: CompareSpec, rid: str, overrides: list[str], status: dict | None, base: str | None = None) -> bool:
    """Finished (summary.json), not marked failed, and its saved config equals what we would run."""
    run_dir = spec.runs_dir / rid
    if not (run_dir / "summary.json").is_file() or (status or {}).get("status") == "failed":
        return False
    try:
        from rlcore.config import load_config

        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        return saved == load_config(base or spec.base, overrides).to_dict()
    except Exception:  # noqa: BLE001 - anything unreadable means "run it again"
        return False


def _launch(spec: CompareSpec, rid: str, overrides: list[str], skip_done: bool, statuses: dict,
            base: str | None = None) -> bool:
    import rlcore

    base = base or spec.base
    if skip_done and is_done(spec, rid, overrides, statuses.get(rid), base):
        print(f"[compare] {rid}: already done, skipping", flush=True)
        return True
    run_dir = spec.runs_dir / rid
    for stale in ("summary.json", "metrics.jsonl"):  # a failed rerun must not show old numbers
        (run_dir / stale).unlink(missing_ok=True)
    statuses[rid] = {"status": "running"}
    _write_statuses(spec, statuses)
    print(f"[compare] {rid}: rlcore.train({base}, {overrides})", flush=True)
    try:
        rlcore.train(base, overrides)
        statuses[rid] = {"status": "ok"}
    except Exception as e:  # noqa: BLE001 - one broken config must not stop the comparison
        traceback.print_exc(file=sys.stderr)
        statuses[rid] = {"status": "failed", "error": error_reason(e)}
    finally:
        _release_ray()
    _write_statuses(spec, statuses)
    return statuses[rid]["status"] == "ok"


def _release_ray() -> None:
    """Each run sizes its local Ray cluster (a PPO critic needs more CPUs than GRPO): start anew."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def error_reason(e: BaseException) -> str:
    msg = (str(e).strip().splitlines() or [""])[0]
    return (f"{type(e).__name__}: {msg}" if msg else type(e).__name__)[:300]


def run_compare(spec: CompareSpec, only: list[str] | None = None, skip_done: bool = False,
                report_only: bool = False, check: bool = True) -> Path:
    """Train what is asked (sequentially, one process), then (re)build the report; returns report.md."""
    runs = select_runs(spec, only)
    if not report_only:
        if check:
            check_configs(spec, runs)
        statuses = read_statuses(spec)
        shared_ok, rerun_shared = True, False
        if spec.shared_start:
            # --only reuses a matching shared start too: rebuilding it would invalidate the other runs.
            reuse = skip_done or bool(only)
            rerun_shared = not (reuse and is_done(spec, SHARED, shared_start_overrides(spec), statuses.get(SHARED)))
            shared_ok = _launch(spec, SHARED, shared_start_overrides(spec), not rerun_shared, statuses)
            if shared_ok and not shared_model_path(spec).is_dir():
                shared_ok = False
                statuses[SHARED] = {"status": "failed", "error": f"no model at {shared_model_path(spec)}"}
        for run in runs:
            for seed in spec.seeds:
                rid = run_id(run.name, seed)
                if not shared_ok:
                    reason = statuses.get(SHARED, {}).get("error", "failed")
                    statuses[rid] = {"status": "failed", "error": f"shared start failed: {reason}"}
                    continue
                _launch(spec, rid, run_overrides(spec, run, seed), skip_done and not rerun_shared, statuses, run.base)
        _write_statuses(spec, statuses)
    return build_report(spec)


def build_report(spec: CompareSpec) -> Path:
    from rlcore import report

    statuses = read_statuses(spec)
    configs = [
        {"name": r.name, "runs": [
            {"seed": s, "run_dir": str(spec.runs_dir / run_id(r.name, s)), "status": statuses.get(run_id(r.name, s))}
            for s in spec.seeds
        ]}
        for r in spec.runs
    ]
    meta = {
        "name": spec.name, "spec": spec.source, "base": spec.base, "overrides": spec.overrides,
        "seeds": spec.seeds, "budget_samples": spec.budget_samples, "target_accuracy": spec.target_accuracy,
        "metric": spec.metric, "shared_start": spec.shared_start,
        "shared_status": statuses.get(SHARED) if spec.shared_start else None,
    }
    data = report.build(configs, meta)
    return report.write(spec.out_dir, data)
