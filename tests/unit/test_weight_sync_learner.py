"""A one-rank FSDP2 learner keeps its parameters in the /dev/shm weight-sync segment
(rollout/segment_params.py): training updates them there, forwards read them there, and a push
hands the engine exactly the learner's weights without copying them."""
from __future__ import annotations

import socket
import threading

import numpy as np
import pytest
import torch

from rlcore.batch import build_batch
from rlcore.update import UpdateSettings
from rollout.weight_sync import WeightReceiver, open_group


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def learner(tmp_path_factory):
    from rlcore.config import config_from_dict
    from rlcore.learner import LearnerWorker
    from rlcore.tiny_model import build_tiny_model

    model_dir = str(build_tiny_model(tmp_path_factory.mktemp("segment") / "qwen2", arch="qwen2", seed=5,
                                     hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                     intermediate_size=128))
    cfg = config_from_dict({"model": {"path": model_dir},
                            "learner": {"num_ranks": 1, "micro_batch_size": 8, "num_threads": 1, "lr": 1e-2}})
    worker = LearnerWorker(0, 1, "127.0.0.1", _free_port(), cfg.to_dict())
    yield worker
    worker.shutdown()


def _connect(learner, shared_memory: bool):
    port, box = _free_port(), {}
    engine = threading.Thread(target=lambda: box.update(
        receiver=WeightReceiver(open_group("127.0.0.1", port, 1, 2, timeout_s=30))))
    engine.start()
    info = learner.weight_sync("connect", "127.0.0.1", port, 2, "gloo", 30, 1 << 20, shared_memory)
    engine.join()
    return info, box["receiver"]


def _sync(learner, receiver) -> tuple[dict[str, torch.Tensor], dict]:
    box = {}
    pushed = threading.Thread(target=lambda: box.update(timings=learner.weight_sync("push")))
    pushed.start()
    weights = receiver.receive()
    received = {name: tensor.clone() for name, tensor in weights.items()}
    weights.wait()
    pushed.join()
    return received, box["timings"]


def _sft_step(learner, seed: int) -> None:
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(4, 200, 5).tolist() for _ in range(4)]
    completions = [rng.integers(4, 200, 6).tolist() for _ in range(4)]
    learner.train(build_batch(prompts, completions, pad_id=3), "sft", UpdateSettings(lr=1e-2))


def _full_weights(learner) -> dict[str, torch.Tensor]:
    from torch.distributed.tensor import DTensor

    out = {}
    for name, param in learner.model.named_parameters(remove_duplicate=False):
        data = param.detach()
        out[name] = (data.to_local() if isinstance(data, DTensor) else data).clone()
    return out


def test_parameters_live_in_the_segment_and_train_there(learner):
    seqs = [[1, 5, 6, 7, 8, 9, 2], [1, 10, 11, 12, 13, 2]]
    before = learner.sequence_logprobs(seqs)
    info, receiver = _connect(learner, shared_memory=True)
    push = learner._weight_push
    assert info["transport"] == "shared_memory" and receiver.transport == "shared_memory"
    sent = {e.name for b in push.manifest.buckets for e in b.entries}
    assert info["params_in_segment"] == len(sent)  # every parameter sent moved in (tied ones once)
    # Moving them changed no value: the forward, which all-gathers from FSDP's own copy of the
    # storage, gives the same log-probs.
    assert learner.sequence_logprobs(seqs) == before

    base, size = push.segment.data_ptr(), push.segment.numel()
    for step in range(2):
        _sft_step(learner, step)
        learner.sequence_logprobs(seqs)  # a no-grad forward leaves the root unsharded: the push copes
        received, timings = _sync(learner, receiver)
        weights = _full_weights(learner)
        assert set(received) == set(weights)
        for name, tensor in weights.items():
            assert torch.equal(received[name], tensor), name
        locals_ = [p.detach().to_local() for n, p in learner.model.named_parameters() if n in sent]
        assert all(base <= t.data_ptr() < base + size for t in locals_)  # still there after the update
        assert timings["learner_s"] > 0
    assert learner.sequence_logprobs(seqs) != before  # it did learn


def test_parameters_moved_out_again_are_copied(learner):
    """A parameter no longer in the segment (here replaced by assignment) is copied by the push,
    so the engine never sees stale weights."""
    _, receiver = _connect(learner, shared_memory=True)
    name = "model.norm.weight"
    fsdp_param = next(fp for m in learner.model.modules() if hasattr(m, "_get_fsdp_state")
                      for g in m._get_fsdp_state()._fsdp_param_groups for fp in g.fsdp_params
                      if fp.sharded_param is dict(learner.model.named_parameters())[name])
    moved = fsdp_param.sharded_param._local_tensor.clone() + 0.5
    fsdp_param.sharded_param._local_tensor = moved
    fsdp_param._sharded_param_data = moved.view(-1)
    received, _ = _sync(learner, receiver)
    assert torch.equal(received[name], moved)


def test_tcp_transport_leaves_parameters_where_they_are(learner):
    info, receiver = _connect(learner, shared_memory=False)
    assert info["transport"] == "tcp" and info["params_in_segment"] == 0
    received, _ = _sync(learner, receiver)
    for name, tensor in _full_weights(learner).items():
        assert torch.equal(received[name], tensor), name
