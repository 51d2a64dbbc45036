"""transformers `generate` as a rollout engine: no vLLM needed, any HF causal LM works."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from rollout.engine import Completion, Engine, Request, SamplingConfig, validate_weights
from rollout.model_io import expected_weight_shapes, load_causal_lm


class HFEngine(Engine):
    def __init__(self, model_path: str, dtype: str = "float32", device: str = "cpu", batch_size: int = 64,
                 trust_remote_code: bool = False):
        self.model, self.tokenizer = load_causal_lm(model_path, dtype=dtype, device=device,
                                                    trust_remote_code=trust_remote_code)
        self.model.eval()
        self.device = device
        self.batch_size = batch_size
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.expected = expected_weight_shapes(self.model)
        self.tied = bool(getattr(self.model.config, "tie_word_embeddings", False))

    @torch.no_grad()
    def generate(self, requests: list[Request], sampling: SamplingConfig) -> list[Completion]:
        out: list[Completion] = []
        for start in range(0, len(requests), self.batch_size):
            out.extend(self._generate_batch(requests[start : start + self.batch_size], sampling))
        return out

    def _generate_batch(self, requests: list[Request], sampling: SamplingConfig) -> list[Completion]:
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, r in enumerate(requests):  # left padding so generation continues each row's end
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            attn[i, width - len(r.prompt_ids) :] = 1
        greedy = sampling.temperature == 0
        stop_ids = set(sampling.stop_token_ids) | {self.tokenizer.eos_token_id}
        # One generator seeded from the batch's seeds: reproducible for a fixed batch.
        torch.manual_seed(int(requests[0].seed) & 0x7FFFFFFF)
        gen = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=attn.to(self.device),
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None,
            eos_token_id=sorted(stop_ids),
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
        new_tokens = gen.sequences[:, width:].cpu()
        logits = torch.stack(gen.logits, dim=1).float().cpu()  # [B, T, V] raw logits
        if not greedy:
            logits = logits / sampling.temperature
        logp = torch.log_softmax(logits, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        completions = []
        for i in range(len(requests)):
            toks = new_tokens[i].tolist()
            end = next((t + 1 for t, tok in enumerate(toks) if tok in stop_ids), None)
            finish = "stop" if end is not None else "length"
            end = end or len(toks)
            completions.append(Completion(toks[:end], logp[i, :end].tolist(), finish))
        return completions

    @torch.no_grad()
    def load_weights(self, weights: Mapping[str, np.ndarray | torch.Tensor]) -> None:
        """Numpy arrays (object store) or tensors (rollout/weight_sync.py's receive buffers)."""
        from rollout.weight_sync import shapes_of

        validate_weights(shapes_of(weights), self.expected, self.tied)
        state = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v)) for k, v in weights.items()}
        self.model.load_state_dict(state, strict=False)

    @torch.no_grad()
    def sequence_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        result = []
        for seq in sequences:
            ids = torch.tensor([seq], device=self.device)
            logits = self.model(input_ids=ids).logits[0, :-1].float()
            lp = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)
            result.append(lp.cpu().tolist())
        return result
