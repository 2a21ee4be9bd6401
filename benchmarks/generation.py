"""Generation speed of the unit LM and ELLA-V at the released size: KV cache vs no cache.

Both models are built in memory at the released size (dim 1024, 12 layers, 16 heads; k = 500) with
random weights, and generate ``--tokens`` tokens per row at batch 1 and 3. Columns:

* cached, end to end: the real ``UnitLM.generate`` / ``ELLAV.generate`` (prefill + one batched
  decode step per token), timed once.
* cached / no cache, per step: one decoding step timed at the middle of each of ``--points`` equal
  slices of the generation (best of ``--repeats``), summed with the midpoint rule (time at the slice
  middle × tokens per slice). A cached step feeds one token per row against a KV cache of that
  context length; a no-cache step runs the whole sequence so far through the model, as the naive
  decoder :func:`naive_generate` does. Running the naive decoder for all 500 tokens at this size
  takes long on a small CPU; ``--full-naive`` does it anyway and reports that measurement instead.
* speed-up: no-cache / cached time, both from the per-step estimate (same statistic, so contention
  on a shared CPU affects both alike); with ``--full-naive`` both measured end to end.

The ELLA-V prompt has more units than can finish within ``--tokens`` (each unit needs at least an EOP
and a unit token), so every ELLA-V run generates exactly ``--tokens`` tokens.

    python benchmarks/generation.py              # 500 tokens
    python benchmarks/generation.py --quick      # 50 tokens, batch 1: a smoke test
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from dpslm_utils.ellav import ELLAV, unit_tokenizer
from dpslm_utils.random_tiny import random_transformer
from dpslm_utils.transformer import RELEASED_DIMS, ModelArgs, Transformer, sample
from dpslm_utils.ulm import UnitLM

K = 500
ULM_PROMPT_UNITS = 100


@torch.inference_mode()
def naive_generate(model: Transformer, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding without a cache: the full sequence ``[B, L + i]`` goes through the model each step."""
    tokens = prompt
    for _ in range(steps):
        tokens = torch.cat([tokens, sample(model(tokens)[:, -1], 0.0)[:, None]], dim=1)
    return tokens[:, prompt.shape[1] :]


@torch.inference_mode()
def step_seconds(model: Transformer, batch: int, context: int, cached: bool, repeats: int) -> float:
    """Best time of one greedy decoding step with ``context`` tokens before the new one."""
    tokens = torch.randint(4, model.args.vocab_size, (batch, context + 1))
    if cached:
        cache, start = model.new_cache(batch, context + 1), torch.full((batch,), context)
        step = lambda: sample(model(tokens[:, -1:], start, cache)[:, -1], 0.0)
    else:
        step = lambda: naive_generate(model, tokens, 1)
    return min(timed(step) for _ in range(repeats))


def estimated_seconds(model: Transformer, batch: int, prompt: int, tokens: int, cached: bool, options) -> float:
    """Midpoint-rule estimate of ``tokens`` decoding steps after a prompt of ``prompt`` tokens."""
    middles = [prompt + int((point + 0.5) * tokens / options.points) for point in range(options.points)]
    return sum(step_seconds(model, batch, m, cached, options.repeats) for m in middles) * tokens / options.points


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=500, help="generated tokens per row (default 500)")
    parser.add_argument("--quick", action="store_true", help="50 tokens, batch 1 only")
    parser.add_argument("--points", type=int, default=5, help="context lengths timed per estimate")
    parser.add_argument("--repeats", type=int, default=3, help="timings per context length (the best counts)")
    parser.add_argument("--full-naive", action="store_true", help="run the no-cache decoder for every token (slow)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    options = parser.parse_args()
    tokens = 50 if options.quick else options.tokens
    batches = (1,) if options.quick else (1, 3)
    if options.threads:
        torch.set_num_threads(options.threads)

    generator = torch.Generator().manual_seed(0)
    ulm = UnitLM(random_transformer(ModelArgs(**RELEASED_DIMS, vocab_size=K + 1), output_bias=False, seed=1))
    tokenizer = unit_tokenizer(K)
    ellav_args = ModelArgs(**RELEASED_DIMS, vocab_size=len(tokenizer["token_to_id_dict"]))
    ellav = ELLAV(random_transformer(ellav_args, output_bias=True, seed=2), tokenizer)
    ulm_prompt = torch.randint(0, K, (ULM_PROMPT_UNITS,), generator=generator)
    ellav_prompt = torch.unique_consecutive(torch.randint(0, K, (tokens // 2 + 10,), generator=generator))

    # Warm-up, and a check that the cached and the naive decoder agree (the tests check it in depth).
    cached = ulm.generate(ulm_prompt[:10], 8, temperature=0.0)[0] + 1
    assert torch.equal(cached, naive_generate(ulm.transformer, ulm.tokenize(ulm_prompt[:10])[None], 8)[0])
    ellav.generate_tokens(ellav_prompt[:10], max_tokens=8, temperature=0.0)

    print(f"CPU, {torch.get_num_threads()} threads, float32, released size ({RELEASED_DIMS['dim']} dim, "
          f"{RELEASED_DIMS['n_layers']} layers), k={K}, {tokens} generated tokens per row; tokens/s = rows x steps / s")
    print(f"{'model':8} {'batch':>5} {'prompt':>6} | {'cached tok/s':>12} | {'per-step estimate: cached':>25} "
          f"{'no cache':>9} {'speed-up':>9}")  # fmt: skip
    for name, model in (("unit LM", ulm), ("ELLA-V", ellav)):
        for batch in batches:
            if model is ulm:
                prompt = ulm.tokenize(ulm_prompt)[None].expand(batch, -1)
                end_to_end = timed(lambda: ulm.generate(ulm_prompt, tokens, temperature=0.0, n=batch))
            else:
                prompt = ellav.encode(ellav_prompt)[None].expand(batch, -1)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the prompt is deliberately too long to finish
                    end_to_end = timed(lambda: ellav.generate([ellav_prompt] * batch, tokens, temperature=0.0))
            cached = estimated_seconds(model.transformer, batch, prompt.shape[1], tokens, True, options)
            if options.full_naive:
                naive, reference = timed(lambda: naive_generate(model.transformer, prompt, tokens)), end_to_end
            else:
                naive = estimated_seconds(model.transformer, batch, prompt.shape[1], tokens, False, options)
                reference = cached
            rate = lambda seconds: batch * tokens / seconds
            print(f"{name:8} {batch:>5} {prompt.shape[1]:>6} | {rate(end_to_end):>12.1f} | {rate(cached):>25.1f} "
                  f"{rate(naive):>9.2f} {naive / reference:>8.1f}x")  # fmt: skip
    if options.full_naive:
        print("--full-naive: no cache measured end to end; speed-up = its time / cached end-to-end time")


if __name__ == "__main__":
    main()
