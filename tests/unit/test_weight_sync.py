"""Bucketing and manifest of the collective weight sync, and real gloo syncs in-process (over the
socket and through shared memory)."""
from __future__ import annotations

import os
import socket
import threading

import pytest
import torch

from rollout import shared_segment
from rollout.weight_sync import (
    ALIGN_BYTES, LearnerWeightPush, Manifest, WeightReceiver, build_manifest, open_group, send_order, shapes_of,
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


def test_send_order_puts_sibling_weights_back_to_back():
    """q/k/v weights adjacent (an engine fuses them) even where each has a bias (Qwen2)."""
    names = ["model.embed_tokens.weight",
             "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias",
             "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.k_proj.bias",
             "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.v_proj.bias",
             "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.gate_proj.weight",
             "model.layers.0.mlp.up_proj.weight", "model.layers.0.input_layernorm.weight",
             "model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.bias", "lm_head.weight"]
    order = [n for n, _ in send_order([(n, None) for n in names])]
    assert sorted(order) == sorted(names)
    attn = [n for n in order if ".layers.0.self_attn." in n]
    assert attn == ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                    "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight",
                    "model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.k_proj.bias",
                    "model.layers.0.self_attn.v_proj.bias"]
    assert order.index("model.layers.0.mlp.up_proj.weight") == order.index("model.layers.0.mlp.gate_proj.weight") + 1
    assert max(order.index(n) for n in attn) < order.index("model.layers.1.self_attn.q_proj.weight")  # layer by layer


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


def _leftover_segments() -> list[str]:
    prefix = f"rlcore-weights-{os.getpid()}-"
    return [f for f in os.listdir(shared_segment.SHM_DIR) if f.startswith(prefix)]


@pytest.mark.parametrize("transport", ["shared_memory", "tcp", "tcp_fallback"])
@pytest.mark.parametrize("solo_bytes", [1 << 20, 1024], ids=["all_packed", "large_alone"])
def test_broadcast_round_trip_over_gloo(monkeypatch, solo_bytes, transport):
    """Rank 0 (a learner without FSDP) and one receiver in two threads: every name arrives, the
    tied head under both names, and a second sync reuses the same receive buffers. Through
    /dev/shm when the receiver can map rank 0's segment; over the socket when shared memory is
    off or the receiver cannot see the segment (another host: here attach is made to fail)."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    if transport == "tcp_fallback":
        monkeypatch.setattr(shared_segment, "attach", lambda path, nbytes: None)
    torch.manual_seed(0)
    model = TiedModel()
    sender = LearnerWeightPush(model, rank=0, tied_lm_head=False, bucket_bytes=1024, solo_bytes=solo_bytes)
    assert sender.manifest.aliases == {"head.weight": "embed.weight"}
    assert len(sender.manifest.buckets) > 2  # several buckets and the double buffer get used
    port = _free_port()
    box = {}

    def engine():  # joins while rank 0 waits for it to say whether it mapped the segment
        box["receiver"] = WeightReceiver(open_group("127.0.0.1", port, 1, 2, timeout_s=30))

    t = threading.Thread(target=engine)
    t.start()
    settled = sender.connect("127.0.0.1", port, 2, "gloo", 30, shared_memory=transport != "tcp")
    t.join()
    receiver = box["receiver"]
    assert receiver.manifest == sender.manifest
    expected = "shared_memory" if transport == "shared_memory" else "tcp"
    assert settled == receiver.transport == expected
    assert _leftover_segments() == []  # unlinked once mapped (or never made): nothing stays in /dev/shm

    buffers = None
    for step in range(2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        pushed = threading.Thread(target=lambda: box.update(timings=sender.push()))
        pushed.start()
        weights = receiver.receive()
        assert set(shapes_of(weights)) == {n for n, _ in model.named_parameters(remove_duplicate=False)}
        received = {name: tensor.clone() for name, tensor in weights.items()}
        pointers = {name: weights[name].data_ptr() for name in weights}
        weights.wait()
        pushed.join()
        for name, param in model.named_parameters(remove_duplicate=False):
            assert torch.equal(received[name], param.detach()), name
        assert box["timings"]["learner_s"] >= box["timings"]["gather_s"] >= 0
        assert buffers in (None, pointers)
        buffers = pointers
    if expected == "shared_memory":  # the engine reads rank 0's writes in place, no receive buffers
        base, size = receiver.segment.data_ptr(), receiver.segment.numel()
        assert all(base <= ptr < base + size for ptr in buffers.values())


def test_no_shared_segment_where_the_directory_is_missing(tmp_path):
    path, why = shared_segment.create(1024, directory=str(tmp_path / "absent"))
    assert path is None and "does not exist" in why
    path, segment = shared_segment.create(1024, directory=str(tmp_path))
    try:
        assert segment.numel() == 1024 and os.path.getsize(path) == 1024
        mapped = shared_segment.attach(path, 1024)
        segment[:4] = torch.tensor([1, 2, 3, 4], dtype=torch.uint8)
        assert mapped[:4].tolist() == [1, 2, 3, 4]  # one memory, two mappings
        assert shared_segment.attach(path, 2048) is None  # not the segment that was offered
    finally:
        shared_segment.unlink(path)
    assert shared_segment.attach(path, 1024) is None


def test_back_to_back_views_only_where_parts_are_adjacent():
    """The engine packs a fused layer straight from the receive buffers only where its parts lie
    there one after the other (rollout/vllm_cpu_reload.py)."""
    from rollout.vllm_cpu_reload import _back_to_back

    flat = torch.arange(40, dtype=torch.float32)
    buffers = {"q": flat[0:8].view(4, 2), "k": flat[8:12].view(2, 2), "v": flat[12:16].view(2, 2),
               "gap": flat[20:24].view(2, 2), "wide": flat[24:30].view(2, 3), "other": torch.zeros(2, 2)}
    fused = _back_to_back(buffers, ["q", "k", "v"])
    assert fused.shape == (8, 2) and torch.equal(fused, torch.cat([buffers[n] for n in "qkv"]))
    assert fused.data_ptr() == buffers["q"].data_ptr()  # a view, not a copy
    flat[0] = -1.0
    assert fused[0, 0] == -1.0
    assert _back_to_back(buffers, ["q", "v"]) is None  # k lies between them
    assert _back_to_back(buffers, ["v", "gap"]) is None  # 4 elements apart
    assert _back_to_back(buffers, ["k", "other"]) is None  # another storage
    assert _back_to_back(buffers, ["gap", "wide"]) is None  # rows of another width
    assert _back_to_back(buffers, ["q", "missing"]) is None
    assert torch.equal(_back_to_back(buffers, ["wide"]), buffers["wide"])
