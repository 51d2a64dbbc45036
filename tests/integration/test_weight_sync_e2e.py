"""Collective weight sync on the real stack: local Ray, the vLLM CPU engine, FSDP2 learners."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def _max_diff(a, b) -> float:
    return max(float(np.abs(np.array(x) - np.array(y)).max()) for x, y in zip(a, b))


@pytest.mark.parametrize("kind,ranks", [("collective", 1), ("collective", 2), ("object_store", 1)])
def test_engine_matches_learner_after_sync(ray_cluster, make_config, kind, ranks):
    """The engine first gets other (noisy) weights; after a sync its log-probs equal the
    learner's again, twice in a row (the second sync reuses every buffer)."""
    import ray

    from rlcore import topology
    from rlcore.groups import LearnerGroup, RolloutGroup, make_weight_sync

    cfg = make_config(learner__num_ranks=ranks, rollout__weight_sync=kind)
    rollout = RolloutGroup(topology.create_rollout_group(cfg))
    learners = LearnerGroup(*topology.create_learner_group(cfg))
    try:
        sync = make_weight_sync(kind, learners, rollout)
        seqs = [[1, 5, 6, 7, 8, 9, 2], [1, 10, 11, 12, 13, 14, 15, 16, 2]]
        ours = learners.sequence_logprobs(seqs)
        weights = ray.get(learners.gather_weights())
        rng = np.random.default_rng(0)
        for version in (1, 2):
            noisy = {k: v + rng.normal(0, 0.05, v.shape).astype(np.float32) for k, v in weights.items()}
            rollout.update_weights(ray.put(noisy), 0)
            assert _max_diff(ours, rollout.sequence_logprobs(seqs)[0]) > 1e-2
            timings = sync.push(version)
            assert _max_diff(ours, rollout.sequence_logprobs(seqs)[0]) < 1e-5
            assert timings["time/sync_total_s"] > 0
        state = ray.get(rollout.workers[0].__ray_call__.remote(
            lambda w: (w.weights_version, bool(w.engine._fast_reload), len(w.engine._fast_reload.bound),
                       len(w.engine._fast_reload.metas))))
        assert state[:2] == (2, True)  # and the engine used the in-place path (rollout/vllm_cpu_reload.py)
        # From the second collective sync on, every packed layer is packed straight from the
        # receive buffers (the first one, through the model's loader, showed that they may be).
        assert state[2] == (state[3] if kind == "collective" else 0) and state[3] > 0
    finally:
        topology.shutdown_group(rollout.workers)
        topology.shutdown_group(learners.workers, learners.placement)


def test_inplace_reload_equals_vllm_reload(ray_cluster, tiny_model):
    """rollout/vllm_cpu_reload.py gives exactly the log-probs of vLLM's own reload_weights."""
    import ray

    from rollout.worker import RolloutWorker

    def compare(worker):
        import torch
        from safetensors.torch import load_file

        engine = worker.engine
        weights = load_file(f"{engine.llm.llm_engine.model_config.model}/model.safetensors")
        generator = torch.Generator().manual_seed(0)
        weights = {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in weights.items()}
        weights.setdefault("lm_head.weight", weights["model.embed_tokens.weight"])
        seqs = [[1, 5, 6, 7, 8, 9, 2], [1, 10, 11, 12, 13, 14, 15, 16, 2]]
        before = engine.sequence_logprobs(seqs)
        engine.load_weights(weights)
        fast, used_fast = engine.sequence_logprobs(seqs), bool(engine._fast_reload)
        engine._fast_reload = False  # vLLM's reload_weights from here on
        engine.load_weights(weights)
        return before, fast, engine.sequence_logprobs(seqs), used_fast

    worker = ray.remote(RolloutWorker).options(num_cpus=1).remote("vllm", tiny_model, {"max_model_len": 128})
    try:
        before, fast, reference, used_fast = ray.get(worker.__ray_call__.remote(compare))
        assert used_fast and _max_diff(before, fast) > 1e-2
        assert fast == reference
    finally:
        ray.get(worker.shutdown.remote())
        ray.kill(worker)
