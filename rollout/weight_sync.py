"""Weight sync through a process group: learner rank 0 broadcasts the weights to every engine.

Why not the object store: each step rank 0 gathered a fresh fp32 state dict, converted it to
numpy and put it (538 MB for SmolLM2-135M) into the object store, where every engine fetched it.
Fresh memory on both sides (page faults), one more copy per hop, and a second copy of the model
in shared memory. Here the group and every buffer are set up once; per step rank 0 broadcasts
the full weights bucket by bucket (large tensors straight from their storage, small ones packed
into two reused buffers), and each engine receives into its own persistent buffers and hands
views of them to the engine, which starts loading while later buckets are still arriving.
One learner rank, SmolLM2-135M, this 2-core machine: 0.54 s per sync against 0.96 s before
(benchmarks/weight_sync.py); the engine's re-packing of its linear layers, not the transfer,
is most of what is left (rollout/vllm_cpu_reload.py).

Where rank 0 and every engine share a host (and `rollout.weight_sync_shared_memory` is on),
the bytes do not cross a socket at all: rank 0 writes each bucket into a /dev/shm segment that
every engine has mapped, and broadcasts only a token per bucket (rollout/shared_segment.py).
A single learner rank keeps its parameters in that segment and copies nothing at all
(rollout/segment_params.py).

The group (rank 0 = learner rank 0, rank 1 + i = rollout worker i) is its own
`ProcessGroupGloo`/`ProcessGroupNCCL` on its own TCPStore: the learners' default FSDP group is
never touched. Every broadcast is a collective, so the driver must issue the learner calls and
the engine calls together (`ray.get` on all of them), never one side after the other.

The manifest (names, shapes, dtypes, bucket offsets) is fixed once at setup: rank 0 publishes
it in the store, the engines read it there, and tied weights (a tied `lm_head.weight`) travel
once and are handed to the engine under both names (vLLM CPU needs `lm_head.weight`, see
NOTES-cpu-stack.md).
"""
from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from rollout import segment_params, shared_segment

BUCKET_BYTES = 128 << 20  # most bytes packed into one broadcast, and the in-flight window
SOLO_BYTES = 1 << 20  # a tensor this large travels alone, straight from the learner's storage
ALIGN_BYTES = 64  # every tensor starts on a cache line inside its bucket
STORE_PREFIX = "rlcore/weights"


# ----------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    offset: int  # in elements of the bucket's dtype

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Bucket:
    dtype: str  # "float32", ...
    numel: int
    entries: tuple[Entry, ...]

    @property
    def nbytes(self) -> int:
        return self.numel * _dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Manifest:
    """What travels, in which bucket at which offset; identical on every rank."""

    buckets: tuple[Bucket, ...]
    aliases: dict[str, str]  # name -> name of the tensor it shares storage with (sent once)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buckets)

    def layout(self) -> tuple[list[int], int]:
        """Byte offset of every bucket in one contiguous segment (each on a cache line), and its size."""
        offsets, end = [], 0
        for bucket in self.buckets:
            start = -(-end // ALIGN_BYTES) * ALIGN_BYTES
            offsets.append(start)
            end = start + bucket.nbytes
        return offsets, end

    def slices(self, base: torch.Tensor) -> list[torch.Tensor]:
        """Every bucket's bytes in `base` (uint8, `layout()`'s size), in order."""
        offsets, _ = self.layout()
        return [base[start : start + b.nbytes] for start, b in zip(offsets, self.buckets)]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every name the engine receives (aliases included) and its shape."""
        out = {e.name: e.shape for b in self.buckets for e in b.entries}
        out.update({alias: out[source] for alias, source in self.aliases.items()})
        return out

    def to_json(self) -> str:
        return json.dumps({
            "aliases": self.aliases,
            "buckets": [{"dtype": b.dtype, "numel": b.numel,
                         "entries": [[e.name, list(e.shape), e.offset] for e in b.entries]} for b in self.buckets],
        })

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        buckets = tuple(
            Bucket(b["dtype"], b["numel"], tuple(Entry(n, tuple(s), o) for n, s, o in b["entries"]))
            for b in raw["buckets"]
        )
        return cls(buckets, dict(raw["aliases"]))


def build_manifest(
    tensors: Iterable[tuple[str, tuple[int, ...], str]],
    aliases: Mapping[str, str] | None = None,
    bucket_bytes: int = BUCKET_BYTES,
    solo_bytes: int = SOLO_BYTES,
) -> Manifest:
    """Pack (name, shape, dtype) in order into buckets of one dtype and at most `bucket_bytes`.

    Order is kept (a layer's tensors arrive together, which is how engines load best). A tensor
    of `solo_bytes` or more gets a bucket of its own: rank 0 sends it without packing it first
    (packing 538 MB cost ~0.1-0.2 s here, and per-tensor broadcasts were as fast as 128 MB ones:
    ~0.2 s for SmolLM2's 272 tensors on loopback gloo); small ones (norms, biases) share
    buckets so that they do not cost one collective each. Names in `aliases` are not sent.
    """
    aliases = dict(aliases or {})
    buckets: list[Bucket] = []
    entries: list[Entry] = []
    dtype, used = None, 0

    def close():
        if entries:
            buckets.append(Bucket(dtype, used, tuple(entries)))

    for name, shape, tdtype in tensors:
        if name in aliases:
            continue
        item = _dtype(tdtype).itemsize
        align = max(ALIGN_BYTES // item, 1)
        start = -(-used // align) * align
        numel = Entry(name, tuple(shape), 0).numel
        solo = numel * item >= solo_bytes
        if entries and (solo or tdtype != dtype or (start + numel) * item > bucket_bytes):
            close()
            entries, used, start = [], 0, 0
        dtype = tdtype
        entries.append(Entry(name, tuple(int(d) for d in shape), start))
        used = start + numel
        if solo:
            close()
            entries, used = [], 0
    close()
    sent = {e.name for b in buckets for e in b.entries}
    for alias, source in aliases.items():
        if source not in sent:
            raise ValueError(f"alias {alias} -> {source}: {source} is not sent")
    return Manifest(tuple(buckets), aliases)


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"not a torch dtype: {name!r}")
    return dtype


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _views(raw: torch.Tensor, bucket: Bucket) -> list[tuple[str, torch.Tensor]]:
    flat = raw[: bucket.nbytes].view(_dtype(bucket.dtype))
    return [(e.name, flat[e.offset : e.offset + e.numel].view(e.shape)) for e in bucket.entries]


# -------------------------------------------------------------------------------- group


@dataclass
class Group:
    """One rank's handle on the weight-update group (the store must outlive the group)."""

    store: dist.Store
    pg: object
    rank: int
    world_size: int
    device: torch.device

    def broadcast(self, tensor: torch.Tensor):
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        return self.pg.broadcast([tensor], opts)


def open_group(addr: str, port: int, rank: int, world_size: int, backend: str = "gloo",
               timeout_s: float = 300.0) -> Group:
    """Join the weight-update group; rank 0 hosts its TCPStore. Blocks until all ranks joined."""
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(addr, port, world_size, is_master=rank == 0, timeout=timeout)
    store = dist.PrefixStore(STORE_PREFIX, store)
    if backend == "gloo":
        pg = dist.ProcessGroupGloo(store, rank, world_size, timeout)
        device = torch.device("cpu")
    elif backend == "nccl":  # not exercised on the CPU machine this was written on
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        pg = dist.ProcessGroupNCCL(store, rank, world_size, opts)
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        raise ValueError(f"weight sync backend must be gloo or nccl, got {backend!r}")
    return Group(store, pg, rank, world_size, device)


# --------------------------------------------------------------------------- learner side


class LearnerWeightPush:
    """On every learner rank: gathers full weights (an FSDP collective all ranks take part in);
    rank 0 broadcasts bucket by bucket, large tensors straight from their storage and small ones
    packed into two reused buffers, with at most `window` bytes in flight."""

    def __init__(self, model: torch.nn.Module, rank: int, tied_lm_head: bool, bucket_bytes: int = BUCKET_BYTES,
                 solo_bytes: int = SOLO_BYTES):
        self.model, self.rank = model, rank
        params = list(model.named_parameters(remove_duplicate=False))
        first: dict[int, str] = {}
        aliases = {}
        for name, p in params:
            if id(p) in first:
                aliases[name] = first[id(p)]
            else:
                first[id(p)] = name
        names = {n for n, _ in params}
        if tied_lm_head and "lm_head.weight" not in names:  # some models drop the tied head
            aliases["lm_head.weight"] = "model.embed_tokens.weight"
        self.manifest = build_manifest(
            ((n, tuple(p.shape), _dtype_name(p.dtype)) for n, p in send_order(params)), aliases, bucket_bytes,
            solo_bytes,
        )
        self.window = 2 * bucket_bytes  # bytes queued on the wire before rank 0 waits for the oldest
        self.group: Group | None = None
        self._raw: list[torch.Tensor] = []
        self.segment: torch.Tensor | None = None  # /dev/shm, shared with every engine (rollout/shared_segment.py)
        self._segment_views: list[list[tuple[str, torch.Tensor]]] = []  # per bucket, into the segment
        self.adopted = 0  # parameters living in the segment (rollout/segment_params.py)

    def connect(self, addr: str, port: int, world_size: int, backend: str, timeout_s: float,
                shared_memory: bool = True) -> str | None:
        """Open the group; returns the transport ("shared_memory" or "tcp") on rank 0."""
        if self.rank != 0:
            return None
        self.group = open_group(addr, port, 0, world_size, backend, timeout_s)
        self.group.store.set("manifest", self.manifest.to_json())
        g = self.group
        self.segment = shared_segment.offer(g.store, g.world_size, self.manifest.layout()[1],
                                            shared_memory and g.device.type == "cpu")
        if self.segment is not None:  # one rank: the parameters themselves move into the segment
            self._segment_views = [_views(raw, b) for raw, b in zip(self.manifest.slices(self.segment),
                                                                     self.manifest.buckets)]
            self.adopted = segment_params.adopt(self.model, {n: v for views in self._segment_views for n, v in views})
        else:
            # Two buffers for packed buckets: one is filled while the other is on the wire.
            packed = max([b.nbytes for b in self.manifest.buckets if len(b.entries) > 1], default=0)
            self._raw = [torch.empty(packed, dtype=torch.uint8, device=self.group.device) for _ in range(2)]
        return "shared_memory" if self.segment is not None else "tcp"

    @torch.no_grad()
    def push(self) -> dict[str, float]:
        t0 = time.perf_counter()
        if self.adopted:
            segment_params.reshard(self.model)
        unsharded = _unshard(self.model)
        params = dict(self.model.named_parameters(remove_duplicate=False))
        inflight: deque = deque()  # (work, bytes, packing slot or None, tensor kept alive)
        free_slots = [0, 1]
        flying, wait_s = 0, 0.0

        def retire():
            nonlocal flying, wait_s
            work, nbytes, slot, _ = inflight.popleft()
            t = time.perf_counter()
            work.wait()
            wait_s += time.perf_counter() - t
            flying -= nbytes
            if slot is not None:
                free_slots.append(slot)

        segment_views = self._segment_views if self.segment is not None else None
        token = torch.ones(1, dtype=torch.int64)
        threads = torch.get_num_threads()
        if segment_views is not None:
            # One thread copies: on a host shared with the engines, a second one (and OpenMP
            # threads spinning between copies) takes the cores the engines' re-packing needs
            # (SmolLM2, 2 cores, 3 runs each: 0.62-0.68 s per sync with 2 learner threads,
            # 0.43-0.49 s with 1).
            torch.set_num_threads(1)
        try:
            for index, bucket in enumerate(self.manifest.buckets):
                full = [_full_tensor(params[e.name]) for e in bucket.entries]  # every rank, same order
                if self.rank != 0:
                    continue
                if segment_views is not None:  # written into shared memory; a token says it is complete
                    for (_, view), tensor in zip(segment_views[index], full):
                        if tensor.data_ptr() != view.data_ptr():  # not living in the segment
                            view.copy_(tensor)
                    inflight.append((self.group.broadcast(token), 0, None, token))
                    continue
                while inflight and flying + bucket.nbytes > self.window:
                    retire()
                slot = None
                if len(full) == 1 and self._sendable(full[0], bucket):
                    wire = full[0].view(-1).view(torch.uint8)
                else:
                    while not free_slots:
                        retire()
                    slot = free_slots.pop()
                    if self._raw[slot].numel() < bucket.nbytes:  # a lone tensor that needs a copy
                        self._raw[slot] = torch.empty(bucket.nbytes, dtype=torch.uint8, device=self.group.device)
                    for (_, view), tensor in zip(_views(self._raw[slot], bucket), full):
                        view.copy_(tensor)
                    wire = self._raw[slot][: bucket.nbytes]
                inflight.append((self.group.broadcast(wire), bucket.nbytes, slot, wire))
                flying += bucket.nbytes
            while inflight:
                retire()
        finally:
            for work, *_ in inflight:  # after an error: nothing may still read what reshard frees
                try:
                    work.wait()
                except Exception:  # noqa: BLE001 - the error being raised already says what failed
                    pass
            for module in unsharded:
                module.reshard()
            torch.set_num_threads(threads)
        total = time.perf_counter() - t0
        return {"gather_s": total - wait_s, "send_wait_s": wait_s, "learner_s": total}

    def _sendable(self, tensor: torch.Tensor, bucket: Bucket) -> bool:
        same_kind = _dtype_name(tensor.dtype) == bucket.dtype and tensor.device == self.group.device
        return same_kind and tensor.is_contiguous()


def send_order(params: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """Sibling modules' weights back to back, their biases after them: `self_attn.q_proj.weight,
    k_proj.weight, v_proj.weight, ..., q_proj.bias, ...`. An engine that fuses q/k/v (or gate/up)
    then finds the fused weight ready-made in its receive buffers (rollout/vllm_cpu_reload.py);
    in module order a bias would sit between them (Qwen2)."""
    groups: dict[str, int] = {}
    keyed = []
    for index, (name, param) in enumerate(params):
        parent = name.rsplit(".", 2)[0] if name.count(".") >= 2 else ""
        group = groups.setdefault(parent, len(groups))
        keyed.append(((group, 0 if name.endswith(".weight") else 1, index), name, param))
    return [(name, param) for _, name, param in sorted(keyed, key=lambda k: k[0])]


def _unshard(model: torch.nn.Module) -> list:
    """All-gather every FSDP2 module's parameters at once (several ranks only); returns what to
    reshard. One all-gather per FSDP unit, as in a forward pass, instead of one per parameter
    (SmolLM2-135M on 2 gloo ranks: 1.5 s per-parameter `full_tensor`, 1.3 s
    get_model_state_dict). Costs one unsharded copy of the model per rank until the push ends."""
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not modules or not dist.is_initialized() or dist.get_world_size() == 1:
        return []  # one rank: the local shards are the full tensors
    handles = [m.unshard(async_op=True) for m in modules]
    for handle in handles:
        if handle is not None:
            handle.wait()
    return modules


def _full_tensor(param: torch.Tensor) -> torch.Tensor:
    """The whole parameter: an all-gather for a DTensor still sharded over several ranks, free
    on one rank and after `_unshard`."""
    from torch.distributed.tensor import DTensor

    data = param.detach()
    if isinstance(data, DTensor):
        return data.to_local() if data.device_mesh.size() == 1 else data.full_tensor()
    return data


def learner_weight_sync(worker, action: str, *args):
    """Entry point for `LearnerWorker.weight_sync` (kept out of the learner's own code)."""
    if action == "connect":
        addr, port, world_size, backend, timeout_s, bucket_bytes, shared_memory = args
        worker._weight_push = push = LearnerWeightPush(worker.model, worker.rank, worker.tied, bucket_bytes)
        transport = push.connect(addr, port, world_size, backend, timeout_s, shared_memory)
        return {"buckets": len(push.manifest.buckets), "bytes": push.manifest.nbytes, "transport": transport,
                "params_in_segment": push.adopted}
    if action == "push":
        return worker._weight_push.push()
    raise ValueError(f"unknown weight_sync action {action!r}")


# ---------------------------------------------------------------------------- engine side


class WeightReceiver:
    """On a rollout worker: persistent receive buffers, one per bucket, allocated at setup."""

    def __init__(self, group: Group):
        self.group = group
        self.manifest = Manifest.from_json(group.store.get("manifest").decode())
        self.segment = shared_segment.accept(group.store, group.rank)
        # Rank 0 writes into the segment and a token per bucket says when; over TCP the buckets
        # arrive in one allocation laid out as the segment: a fused layer's parts lie back to back.
        base = self.segment
        if base is None:
            base = torch.empty(self.manifest.layout()[1], dtype=torch.uint8, device=group.device)
        self._raw = self.manifest.slices(base)
        self._tokens = torch.zeros(len(self._raw), dtype=torch.int64)
        # name -> (bucket index, view); an alias shares its source's view and follows it in order
        self.where: dict[str, tuple[int, torch.Tensor]] = {}
        self.order: list[str] = []
        by_source: dict[str, list[str]] = {}
        for alias, source in self.manifest.aliases.items():
            by_source.setdefault(source, []).append(alias)
        for i, (raw, bucket) in enumerate(zip(self._raw, self.manifest.buckets)):
            for name, view in _views(raw, bucket):
                for key in (name, *by_source.get(name, [])):
                    self.where[key] = (i, view)
                    self.order.append(key)
        self.meta = {n: torch.empty(v.shape, dtype=v.dtype, device="meta") for n, (_, v) in self.where.items()}
        self.views = {n: v for n, (_, v) in self.where.items()}  # the same memory on every sync

    def receive(self) -> ReceivedWeights:
        """Start every bucket's broadcast; the returned mapping waits for a bucket when read."""
        if self.segment is not None:
            return ReceivedWeights(self, [self.group.broadcast(self._tokens[i : i + 1]) for i in range(len(self._raw))])
        return ReceivedWeights(self, [self.group.broadcast(raw) for raw in self._raw])

    @property
    def transport(self) -> str:
        return "shared_memory" if self.segment is not None else "tcp"


class ReceivedWeights(Mapping):
    """name -> tensor (views of the receive buffers, valid until the next sync).

    Reading a value waits for its bucket only, so an engine that loads in manifest order starts
    on the first bucket while the others are still arriving. `meta` gives the shapes without
    waiting (for validation before the engine is touched).
    """

    def __init__(self, receiver: WeightReceiver, works: list):
        self._where, self._order, self.meta = receiver.where, receiver.order, receiver.meta
        self.buffers = receiver.views  # where each tensor arrives, without waiting (engines bind to it)
        self._works = works
        self.wait_s = 0.0

    def __getitem__(self, name: str) -> torch.Tensor:
        index, view = self._where[name]
        self._wait(index)
        return view

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def wait(self) -> None:
        """Finish every broadcast (also the ones an engine did not read)."""
        for index in range(len(self._works)):
            self._wait(index)

    def _wait(self, index: int) -> None:
        work = self._works[index]
        if work is not None:
            t = time.perf_counter()
            work.wait()
            self.wait_s += time.perf_counter() - t
            self._works[index] = None


def shapes_of(weights: Mapping) -> Mapping:
    """What to validate: `meta` for received weights (no waiting), the weights themselves otherwise."""
    return getattr(weights, "meta", weights)
