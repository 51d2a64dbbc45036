"""The whole distributed topology in one place: Ray, the rollout group and the learner group.

driver (Trainer) --generate--> RolloutWorker x N (vLLM or HF engine)
                 --train/logprobs--> LearnerWorker x K (one FSDP2 process group)
                 --values/train_values--> CriticWorker x C (PPO only: its own FSDP2 group)
                 --gather_weights--> learner rank 0 --object store ref--> every RolloutWorker
                    (rollout.weight_sync: object_store), or
                 learner rank 0 --broadcast, own process group--> every RolloutWorker (collective)
The driver only passes object refs for weights; it never deserialises them.
"""
from __future__ import annotations

import os
import shlex
import socket
import sys
import uuid
from pathlib import Path

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from algorithms import get_algorithm
from rlcore.config import ExperimentConfig

# Local clusters stay on loopback; this must be set before Ray starts.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "GLOO_SOCKET_IFNAME": "lo"}
WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
}


def cpus_wanted(cfg: ExperimentConfig) -> float:
    """CPUs the run's actors ask for: engines, learner ranks and, for a critic, its ranks."""
    wanted = cfg.rollout.num_workers * cfg.rollout.cpus_per_worker + cfg.learner.num_ranks * cfg.learner.cpus_per_rank
    if get_algorithm(cfg.algorithm.name).needs_critic:
        wanted += cfg.critic.num_ranks * cfg.critic.cpus_per_rank
    return wanted


def connect(cfg: ExperimentConfig) -> None:
    """Attach to `ray.address` / $RAY_ADDRESS, or start a local cluster on 127.0.0.1."""
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS", "")
    runtime_env = {"env_vars": dict(WORKER_ENV)}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    os.environ.update(LOOPBACK_ENV)
    num_cpus = cfg.ray.num_cpus or max(int(-(-cpus_wanted(cfg) // 1)), os.cpu_count() or 1)
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        runtime_env=local_runtime_env(),
        log_to_driver=True,
        configure_logging=False,
    )


def local_runtime_env() -> dict:
    """The runtime env of a local cluster's workers.

    Ray starts each worker with ``bash -c "exec <python> ..."`` and leaves the interpreter's path
    unquoted (ray/_private/runtime_env/context.py), so a venv under a path with a space in it
    started no worker at all. A local cluster runs this interpreter, so name it, quoted.
    """
    env: dict = {"env_vars": {**WORKER_ENV, **LOOPBACK_ENV}}
    if shlex.quote(sys.executable) != sys.executable:
        env["py_executable"] = shlex.quote(sys.executable)
    return env


@ray.remote
def _pick_rendezvous() -> tuple[str, int]:
    """Address of the node that will hold learner rank 0, as seen by the other ranks."""
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    ip = ray.util.get_node_ip_address()
    return ("127.0.0.1" if ip in ("127.0.0.1", "localhost") else ip), port


def rendezvous_near(placement) -> tuple[str, int]:
    """Address and free port on the node of `placement`'s first bundle (learner rank 0's)."""
    options = {"num_cpus": 0}
    if placement is not None:
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement, placement_group_bundle_index=0)
    return ray.get(_pick_rendezvous.options(**options).remote())


def create_learner_group(cfg: ExperimentConfig, role: str = "policy", timeout_s: float = 300.0) -> tuple[list, object]:
    """K FSDP ranks packed onto as few nodes as possible (NCCL likes neighbours).

    role "policy" builds LearnerWorkers from `learner:`; role "critic" builds PPO's value model
    (CriticWorkers) from `critic:` on top of the learner settings. Returns the actors and their
    placement group; `shutdown_group` releases both.
    """
    if role == "critic":
        from rlcore.critic import CriticWorker as worker_class
    else:
        from rlcore.learner import LearnerWorker as worker_class
    worker_cfg = cfg.to_dict()  # the wire form; each rank rebuilds the typed config
    lc = worker_class.rank_settings(cfg)
    ranks = lc.num_ranks
    bundles = [{"CPU": lc.cpus_per_rank, **({"GPU": lc.gpus_per_rank} if lc.gpus_per_rank else {})}] * ranks
    pg = placement_group(bundles, strategy="PACK")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise RuntimeError(
            f"could not place {ranks} {role} ranks ({bundles[0]} each) within {timeout_s:.0f}s; "
            f"cluster has {ray.cluster_resources()}, free {ray.available_resources()}"
        ) from None
    strategy = lambda i: PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)  # noqa: E731
    addr, port = ray.get(_pick_rendezvous.options(scheduling_strategy=strategy(0), num_cpus=0).remote())
    actor_cls = ray.remote(worker_class)
    workers = [
        actor_cls.options(
            num_cpus=lc.cpus_per_rank, num_gpus=lc.gpus_per_rank, scheduling_strategy=strategy(rank)
        ).remote(rank, ranks, addr, port, worker_cfg)
        for rank in range(ranks)
    ]
    ray.get([w.ping.remote() for w in workers])
    return workers, pg


def create_rollout_group(cfg: ExperimentConfig) -> list:
    """rollout.num_workers engines; actor creation does not wait for them to load."""
    return [create_rollout_worker(cfg) for _ in range(cfg.rollout.num_workers)]


def create_rollout_worker(cfg: ExperimentConfig):
    """One engine actor (also what replaces an engine that died)."""
    from rollout.worker import RolloutWorker

    rc = cfg.rollout
    engine_kwargs = {"dtype": cfg.model.dtype, "seed": cfg.seed, "cpu_cores": list(rc.cpu_cores),
                     "trust_remote_code": cfg.model.trust_remote_code}
    if rc.engine == "vllm":
        engine_kwargs.update(
            max_model_len=rc.max_model_len,
            gpu_memory_utilization=rc.gpu_memory_utilization,
            tensor_parallel_size=rc.tensor_parallel_size,
            enforce_eager=rc.enforce_eager,
            extra=rc.vllm_kwargs,
        )
    return ray.remote(RolloutWorker).options(num_cpus=rc.cpus_per_worker, num_gpus=rc.gpus_per_worker).remote(
        rc.engine, cfg.model.path, engine_kwargs
    )


def shutdown_group(workers: list, placement=None) -> None:
    """Let engines and process groups close cleanly (vLLM leaks /dev/shm otherwise)."""
    refs = [w.shutdown.remote() for w in workers]
    try:
        ray.get(refs, timeout=60)
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass
    for w in workers:
        ray.kill(w)
    if placement is not None:  # a leaked placement group keeps its CPUs/GPUs reserved
        remove_placement_group(placement)



class SharedFilesystemError(RuntimeError):
    """A worker cannot see a file the driver wrote: the cluster's nodes do not share the disk."""


def _unseen(worker, expected: dict[str, tuple[str, str | None]]) -> tuple[str, list[tuple[str, str]]]:
    """Runs inside a worker: which of `expected` (what -> (path, content or None)) it cannot read."""
    missing = []
    for what, (path, content) in expected.items():
        try:
            ok = Path(path).is_file() and (content is None or Path(path).read_text() == content)
        except OSError:
            ok = False
        if not ok:
            missing.append((what, path))
    return ray.util.get_node_ip_address(), missing


def check_shared_filesystem(groups: dict[str, list], run_dir: Path, model_path: str,
                            plugin_files: dict[str, str] | None = None) -> None:
    """Every worker must see the run directory and the model the driver sees, at the same paths.

    Workers read what others wrote there: learner checkpoints (each rank its shard, the driver
    the trainer state), the KL reference model that rank 0 saves, a converted or built model,
    and plug-in files they load themselves (`plugin_files`: config key -> path).
    On a multi-node cluster that needs a filesystem every node mounts at the same path; a fresh
    token written by the driver is read back by every worker, so a stale copy does not pass.
    """
    probe = Path(run_dir).resolve() / f".shared_fs_probe_{uuid.uuid4().hex[:8]}"
    token = uuid.uuid4().hex
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text(token)
    expected = {"run directory (output_dir/name)": (str(probe), token)}
    model_config = Path(model_path) / "config.json"
    if model_config.is_file():  # a hub id is fetched by each worker itself
        expected["model.path"] = (str(model_config.resolve()), None)
    for key, path in (plugin_files or {}).items():
        expected[key] = (path, None)
    try:
        refs = {(role, i): w.__ray_call__.remote(_unseen, expected)
                for role, workers in groups.items() for i, w in enumerate(workers)}
        problems = []
        for (role, i), ref in refs.items():
            node, missing = ray.get(ref)
            problems += [f"{role} {i} on node {node} cannot read the {what} at {path}" for what, path in missing]
    finally:
        probe.unlink(missing_ok=True)
    if problems:
        raise SharedFilesystemError(
            "; ".join(problems) + ". Workers read checkpoints, the KL reference model, the model and plug-in files from "
            "these paths: on a multi-node Ray cluster put output_dir and model.path on a filesystem that "
            "every node mounts at the same path (NFS, Lustre, a cloud file store), given as absolute paths.")
