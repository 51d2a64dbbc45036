"""The shipped math benchmarks: name -> file, field mapping, answer format and default prompt.

The files live in ``data/benchmarks/`` at the repository root (sources and licences in its
``SOURCES.md``). :func:`benchmarks_dir` finds them, first match wins:

1. an explicit ``data_dir`` argument (``rlcore eval --data-dir``, ``eval.benchmark_data_dir``);
2. ``$RLCORE_BENCHMARKS_DIR``;
3. ``<repo root>/data/benchmarks`` next to the ``rlcore`` package (a checkout or an editable
   install, ``pip install -e .``);
4. ``<sys.prefix>/share/rlcore/benchmarks`` (a wheel that installs them as data files).

Every benchmark loads into the common record format of :mod:`rlcore.data.loader`
(``id``, ``prompt``, ``answer``, ``metadata``); ``metadata["benchmark"]`` and
``metadata["answer_format"]`` tell a reward which benchmark and answer style it is scoring.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rlcore.data.loader import DataError, load_records

__all__ = [
    "BOXED_INSTRUCTION", "Benchmark", "BENCHMARKS", "benchmarks_dir", "get_benchmark",
    "list_benchmarks", "load_benchmark", "parse_benchmark_list", "register_benchmark", "pick_reward",
]

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
ENV_DIR = "RLCORE_BENCHMARKS_DIR"
_DROP_FROM_METADATA = ("solution",)  # long worked solutions: not needed to score, costly to ship


@dataclass(frozen=True)
class Benchmark:
    """How to read one benchmark file and how to ask for (and check) its answers."""

    name: str
    file: str  # file name inside the benchmarks directory
    fields: dict[str, str] = field(default_factory=lambda: {"prompt": "problem", "answer": "answer", "id": "id"})
    # How answers are written: "boxed" (last \boxed{...} in the completion) or "gsm8k" (the
    # reference solution ends with "#### N"; a model answer may be boxed or follow "####").
    answer_format: str = "boxed"
    instruction: str = BOXED_INSTRUCTION  # answer-format instruction appended to the problem
    prompt_template: str = "{prompt}\n\n{instruction}"
    # Rewards to score with, in order of preference: the first one that is registered is used.
    rewards: tuple[str, ...] = ("math_answer",)
    group_field: str | None = None  # metadata column for a per-group accuracy breakdown
    description: str = ""


BENCHMARKS: dict[str, Benchmark] = {}
_ALIASES: dict[str, str] = {}


def register_benchmark(bench: Benchmark, aliases: tuple[str, ...] = ()) -> Benchmark:
    """Add a benchmark (e.g. a private test set in the same format) under its name."""
    BENCHMARKS[bench.name] = bench
    for alias in aliases:
        _ALIASES[alias] = bench.name
    return bench


register_benchmark(Benchmark(
    "math500", "math500.jsonl", group_field="level",
    description="MATH-500 (Lightman et al. 2023 subset of the MATH test set), levels 1-5"), aliases=("math-500", "math_500"))
register_benchmark(Benchmark("aime24", "aime24.jsonl", description="AIME 2024 I+II, integer answers 0-999"),
                   aliases=("aime2024",))
register_benchmark(Benchmark("aime25", "aime25.jsonl", description="AIME 2025 I+II, integer answers 0-999"),
                   aliases=("aime2025",))
register_benchmark(Benchmark("amc23", "amc23.jsonl", description="AMC 2023 (40 problems, integer answers)"),
                   aliases=("amc2023", "amc"))
register_benchmark(Benchmark(
    "gsm8k", "gsm8k_test.jsonl", answer_format="gsm8k", rewards=("gsm8k_answer", "math_answer"),
    description="GSM8K test (grade-school word problems; numeric answers)"), aliases=("gsm8k_test",))
register_benchmark(Benchmark(
    "minerva", "minerva_math.jsonl",
    description="Minerva OCW problems (science/engineering; answers with units and decimals)"),
    aliases=("minerva_math",))
register_benchmark(Benchmark(
    "olympiadbench", "olympiadbench.jsonl",
    description="OlympiadBench, English text-only open-ended maths; answer = first final answer"),
    aliases=("olympiad_bench", "olympiad"))


def list_benchmarks() -> list[str]:
    return sorted(BENCHMARKS)


def get_benchmark(name: str) -> Benchmark:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; available: {', '.join(list_benchmarks())}")
    return BENCHMARKS[key]


def parse_benchmark_list(spec: str | list[str]) -> list[Benchmark]:
    """'math500,aime24' (or a list) -> benchmarks, in order, duplicates dropped; 'all' = every one."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n and n.strip()]
    if names == ["all"]:
        names = list_benchmarks()
    out: list[Benchmark] = []
    for name in names:
        bench = get_benchmark(name)
        if bench not in out:
            out.append(bench)
    if not out:
        raise KeyError(f"no benchmark named; available: {', '.join(list_benchmarks())}")
    return out


def _candidate_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    found = []
    if data_dir:
        found.append(Path(data_dir))
    if os.environ.get(ENV_DIR):
        found.append(Path(os.environ[ENV_DIR]))
    found.append(Path(__file__).resolve().parents[2] / "data" / "benchmarks")
    found.append(Path(sys.prefix) / "share" / "rlcore" / "benchmarks")
    return found


def benchmarks_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The first directory (see the module docstring) that holds the shipped benchmark files."""
    candidates = _candidate_dirs(data_dir)
    if data_dir:  # an explicit directory must be right, not silently replaced by another
        candidates = candidates[:1]
    for d in candidates:
        if (d / "SOURCES.md").is_file() or any(d.glob("*.jsonl")):
            return d
    tried = ", ".join(str(d) for d in candidates)
    raise FileNotFoundError(f"benchmark files not found (looked in {tried}); set ${ENV_DIR} or pass a data dir "
                            "pointing at a copy of the repository's data/benchmarks/")


def load_benchmark(bench: str | Benchmark, limit: int = 0, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """Records of one benchmark, the first ``limit`` of them (0 = all), in file order."""
    bench = get_benchmark(bench) if isinstance(bench, str) else bench
    path = benchmarks_dir(data_dir) / bench.file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: benchmark file of {bench.name!r} is missing")
    records = load_records(path, fields=bench.fields)
    if limit and limit > 0:
        records = records[:limit]
    for rec in records:
        if not str(rec.get("answer", "")).strip():
            raise DataError(f"{path}: record {rec['id']}: empty answer")
        meta = {k: v for k, v in rec["metadata"].items() if k not in _DROP_FROM_METADATA}
        meta.update(benchmark=bench.name, answer_format=bench.answer_format)
        rec["metadata"] = meta
        if bench.group_field and bench.group_field in meta:
            rec["group"] = str(meta[bench.group_field])
    return records


def pick_reward(bench: Benchmark, override: str = "") -> str:
    """The reward to score ``bench`` with: ``override`` if given, else its first registered preference."""
    if override:
        return override
    from rewards.registry import registered_rewards

    have = set(registered_rewards())
    for name in bench.rewards:
        if name in have:
            return name
    return "math_answer"
