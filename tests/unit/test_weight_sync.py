"""Bucketing and manifest of the collective weight sync, and one real gloo broadcast in-process."""
from __future__ import annotations

import socket
import threading

import pytest
import torch

from rollout.weight_sync import (
    ALIGN_BYTES, LearnerWeightPush, Manifest, WeightReceiver, build_manifest, open_group, shapes_of,
)


def test_buckets_keep_order_respect_size_and_split_dtypes():
    tensors = [("a", (10,), "float32"), ("b", (3, 4), "float32"), ("c", (250,), "float32"),
               ("d", (5,), "bfloat16"), ("e", (1000,), "float32"), ("f", (2,), "float32")]
    m = build_manifest(tensors, bucket_bytes=1024)
    names = [[e.name for e in b.entries] for b in m.buckets]
    # c no longer fits after a and b (1024 bytes), d starts a bf16 bucket, e (4000 bytes) is
    # alone in an oversized bucket, and f follows in a new one.
    assert names == [["a", "b"], ["c"], ["d"], ["e"], ["f"]]
    assert [b.dtype for b in m.buckets] == ["float32", "float32", "bfloat16", "float32", "float32"]
    assert m.buckets[3].nbytes == 4000 and m.buckets[1].nbytes == 1000
    for bucket in m.buckets:
        item = torch.empty(0, dtype=getattr(torch, bucket.dtype)).element_size()
        end = 0
        for entry in bucket.entries:
            assert entry.offset * item % ALIGN_BYTES == 0 and entry.offset >= end
            end = entry.offset + entry.numel
        assert bucket.numel == end
    assert m.shapes() == {n: s for n, s, _ in tensors}


def test_large_tensors_travel_alone():
    tensors = [("n1", (4,), "float32"), ("w", (64, 64), "float32"), ("n2", (4,), "float32"), ("b", (4,), "float32")]
    m = build_manifest(tensors, bucket_bytes=1 << 20, solo_bytes=16 << 10)
    assert [[e.name for e in b.entries] for b in m.buckets] == [["n1"], ["w"], ["n2", "b"]]


def test_aliases_travel_once_and_the_manifest_survives_json():
    tensors = [("embed", (8, 4), "float32"), ("norm", (4,), "float32"), ("head", (8, 4), "float32")]
    m = build_manifest(tensors, aliases={"head": "embed"})
    assert [e.name for b in m.buckets for e in b.entries] == ["embed", "norm"]
    assert m.shapes()["head"] == (8, 4)
    assert Manifest.from_json(m.to_json()) == m
    with pytest.raises(ValueError, match="not sent"):
        build_manifest(tensors[1:], aliases={"head": "embed"})


class TiedModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.layer = torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight  # tied, as in the real models


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("solo_bytes", [1 << 20, 1024], ids=["all_packed", "large_alone"])
def test_broadcast_round_trip_over_gloo(monkeypatch, solo_bytes):
    """Rank 0 (a learner without FSDP) and one receiver in two threads: every name arrives, the
    tied head under both names, and a second sync reuses the same receive buffers."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    torch.manual_seed(0)
    model = TiedModel()
    sender = LearnerWeightPush(model, rank=0, tied_lm_head=False, bucket_bytes=1024, solo_bytes=solo_bytes)
    assert sender.manifest.aliases == {"head.weight": "embed.weight"}
    assert len(sender.manifest.buckets) > 2  # several buckets and the double buffer get used
    port = _free_port()
    box = {}
    t = threading.Thread(target=lambda: box.update(group=open_group("127.0.0.1", port, 1, 2, timeout_s=30)))
    t.start()
    sender.connect("127.0.0.1", port, 2, "gloo", 30)
    t.join()
    receiver = WeightReceiver(box["group"])
    assert receiver.manifest == sender.manifest

    for step in range(2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        pushed = threading.Thread(target=lambda: box.update(timings=sender.push()))
        pushed.start()
        weights = receiver.receive()
        assert set(shapes_of(weights)) == {n for n, _ in model.named_parameters(remove_duplicate=False)}
        received = {name: tensor.clone() for name, tensor in weights.items()}
        weights.wait()
        pushed.join()
        for name, param in model.named_parameters(remove_duplicate=False):
            assert torch.equal(received[name], param.detach()), name
        assert box["timings"]["learner_s"] >= box["timings"]["gather_s"] >= 0
