"""benchmarks/quickstart_seeds.py: per-run numbers from metrics.jsonl and the pass count."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("quickstart_seeds", ROOT / "benchmarks" / "quickstart_seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(runs: Path, name: str, accs: list[float], wall: float) -> None:
    d = runs / name
    d.mkdir(parents=True)
    rows = []
    for i, acc in enumerate(accs):
        rows.append({"step": 20 * i, "eval/accuracy": acc, "eval/accuracy_unseen": acc / 2, "eval/num_unseen": 80,
                     "eval/num_prompts": 500, "eval/accuracy_sampled": acc / 3})
        rows.append({"step": 20 * i + 1, "reward/mean": 0.5})  # a training row between evaluations
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "process_wall_s.txt").write_text(f"{wall}\n")


def test_gain_best_and_pass_count(tmp_path, monkeypatch):
    qs = _load()
    monkeypatch.setattr(qs, "RUNS", tmp_path)
    _run(tmp_path, "default_s0", [0.0, 0.9, 0.8], 350.0)
    _run(tmp_path, "default_s1", [0.1, 0.2, 0.2], 340.0)  # +10 points: short of +15
    _run(tmp_path, "avx2_s0", [0.0, 0.5, 0.6], 650.0)  # gained, but over the time limit
    results = [qs.read_run(n) for n in ("default_s0", "default_s1", "avx2_s0")]
    first = results[0]
    assert (first["start"], first["end"], first["best"], first["steps"]) == (0.0, 0.8, 0.9, 40)
    assert first["sampled_end"] == 0.8 / 3 and first["unseen_end"] == 0.4 and first["wall_s"] == 350.0
    text = qs.report(results, min_gain=0.15, max_wall=600)
    assert "1 of 3 runs gained >= +0.15 within 600 s" in text
    assert "gain (greedy, end - start): +0.100 .. +0.800" in text
    assert "500 problems, of which 80 never occur in training" in text
