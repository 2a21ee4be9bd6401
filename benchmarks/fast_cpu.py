"""The ``fast=True`` CPU path against float32 at the released size: speed and agreement.

Random weights at the released sizes (unit LM and ELLA-V: dim 1024, 12 layers, 16 heads, hidden
4096, k = 500; WavLM Large: 24 layers, 1024-d), each model once in float32 and once converted by
:func:`dpslm_utils.fast.make_fast` exactly as ``from_checkpoint(..., fast=True)`` does.

* speed: greedy generation of ``--tokens`` tokens per row at batch 1 and 3 (the real ``generate``,
  prefill included), float32 and fast runs interleaved, median of ``--repeats``; then one decoding step
  alone (after the prompt), median of ``--tokens`` steps, interleaved; WavLM: features of
  ``--seconds`` of audio (layer 11).
* kernels: the matrix products alone, float32 / bfloat16 / int8, for batch 3 (decoding) and 500 (WavLM).
* memory: the resident memory that deleting a released-size unit LM frees, float32 and int8 (Linux, glibc).
* agreement (greedy, batch 1): how many of the first ``--tokens`` greedy tokens are identical before
  the first difference; on the float32 greedy sequence (teacher forcing, once one token per step
  through the KV cache as generation decodes, once the whole sequence in one pass as scoring does), the
  share of positions where both pick the same next token, the mean |log p(token)| difference and the
  mean KL(float32 ‖ fast) of the next-token distributions in nats (with random weights these are nearly
  uniform, so the top-1 choice hangs on tiny margins: a pessimistic test); WavLM: the
  relative error ‖f_fast − f‖ / ‖f‖ of the layer-11 features and their cosine similarity.

    python benchmarks/fast_cpu.py [--threads 1] [--tokens 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import os
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from dpslm_utils.ellav import ELLAV, unit_tokenizer
from dpslm_utils.fast import Int8Linear, choose_format, kv_cache_dtype, make_fast
from dpslm_utils.random_tiny import random_transformer
from dpslm_utils.transformer import RELEASED_DIMS, ModelArgs, prefill
from dpslm_utils.ulm import UnitLM
from dpslm_utils.wavlm import POSITIONAL_CONV, WAVLM_LARGE_CONFIG, WavLMEncoder
from timing import interleaved_medians

K = 500


@torch.inference_mode()
def teacher_forced(model, tokens: torch.Tensor, one_step_at_a_time: bool) -> torch.Tensor:
    """Next-token log-probabilities ``[T-1, vocab]`` of a unit LM or ELLA-V along ``tokens [T]``: one token per
    call through a KV cache made as generation makes it, or the whole sequence in one call (as scoring)."""
    transformer = model.transformer
    if not one_step_at_a_time:
        return F.log_softmax(transformer(tokens[None, :-1])[0], dim=-1)
    cache = transformer.new_cache(1, len(tokens), kv_cache_dtype(model.fast))
    logits = [transformer(tokens[None, i : i + 1], torch.tensor([i]), cache)[0, 0] for i in range(len(tokens) - 1)]
    return F.log_softmax(torch.stack(logits), dim=-1)


@torch.inference_mode()
def decoding_steps(models: dict, prompt: torch.Tensor, batch: int, count: int) -> dict:
    """Median seconds of one greedy decoding step of each model's decoder after prefilling ``batch`` copies of
    ``prompt`` into a cache made as generation makes it; the models take their steps in turn."""
    states = {name: prefill(model.transformer, [prompt] * batch, count, None, kv_cache_dtype(model.fast))
              for name, model in models.items()}  # fmt: skip
    times = {name: [] for name in models}
    for _ in range(count):
        for name, model in models.items():
            cache, logits, position = states[name]
            start = time.perf_counter()
            logits = model.transformer(logits.argmax(-1)[:, None], position, cache)[:, -1]
            times[name].append(time.perf_counter() - start)
            states[name] = cache, logits, position + 1
    return {name: statistics.median(values) for name, values in times.items()}


def resident_mib() -> float:
    """This process's resident memory in MiB, after returning freed heap pages to the system (Linux, glibc)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def compare_memory() -> None:
    """MiB that a released-size unit LM holds in float32 and after ``make_fast``: what deleting it frees."""
    sizes = {}
    for precision in ("float32", "int8"):
        model = unit_lm()
        if precision == "int8":
            make_fast(model.transformer, True, weight_bound=True)
        before = resident_mib()
        del model
        sizes[precision] = before - resident_mib()
    print(f"unit LM  memory (resident, freed on deletion): float32 {sizes['float32']:.0f} MiB, "
          f"int8 {sizes['int8']:.0f} MiB")


def unit_lm() -> UnitLM:
    return UnitLM(random_transformer(ModelArgs(**RELEASED_DIMS, vocab_size=K + 1), output_bias=False, seed=1))


def ellav() -> ELLAV:
    tokenizer = unit_tokenizer(K)
    args = ModelArgs(**RELEASED_DIMS, vocab_size=len(tokenizer["token_to_id_dict"]))
    return ELLAV(random_transformer(args, output_bias=True, seed=2), tokenizer)


def compare_language_model(name: str, model, options) -> None:
    fast = copy.deepcopy(model)
    fast.fast = make_fast(fast.transformer, True, weight_bound=True)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, K, (100,), generator=generator)
    if name == "unit LM":
        run = lambda m, batch: m.generate(prompt, options.tokens, temperature=0.0, n=batch)[0]
    else:  # more units than can finish within --tokens: every run generates exactly --tokens tokens
        prompt = torch.unique_consecutive(prompt)
        run = lambda m, batch: m.generate_tokens([prompt] * batch, options.tokens, temperature=0.0)[0][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference, candidate = run(model, 1), run(fast, 1)  # also warm-up runs
        for batch in (1, 3):
            seconds = interleaved_medians({"f32": lambda: run(model, batch), "fast": lambda: run(fast, batch)},
                                          options.repeats)  # fmt: skip
            rate = lambda s: batch * options.tokens / s
            speed_up = seconds["f32"] / seconds["fast"]
            print(f"{name:8} {fast.fast:>5} batch {batch}: float32 {rate(seconds['f32']):6.1f} tok/s, "
                  f"fast {rate(seconds['fast']):6.1f} tok/s, speed-up {speed_up:.2f}x")  # fmt: skip
            tokens = model.tokenize(prompt) if name == "unit LM" else model.encode(prompt)
            step = decoding_steps({"f32": model, "fast": fast}, tokens, batch, options.tokens)
            print(f"{name:8} {fast.fast:>5} batch {batch}: one decoding step (median of {options.tokens}): float32 "
                  f"{1e3 * step['f32']:.1f} ms, fast {1e3 * step['fast']:.1f} ms, "
                  f"speed-up {step['f32'] / step['fast']:.2f}x")  # fmt: skip
    differ = (reference != candidate).nonzero()
    same_prefix = int(differ[0]) if len(differ) else len(reference)
    sequence = model.tokenize(reference) if name == "unit LM" else torch.cat([model.encode(prompt), reference])
    print(f"{name:8} agreement: greedy tokens identical for {same_prefix}/{len(reference)}")
    for one_step_at_a_time, how in ((True, "one token per step, KV cache"), (False, "whole sequence in one pass")):
        logprobs, logprobs_fast = (teacher_forced(m, sequence, one_step_at_a_time) for m in (model, fast))
        logp, logp_fast = (lp.gather(-1, sequence[1:, None])[:, 0] for lp in (logprobs, logprobs_fast))
        kl = (logprobs.exp() * (logprobs - logprobs_fast)).sum(-1)
        entropy = -(logprobs.exp() * logprobs).sum(-1)
        top1 = (logprobs.argmax(-1) == logprobs_fast.argmax(-1)).float()
        print(f"{name:8} teacher-forced, {how}, over {len(logp)} positions: top-1 agreement {top1.mean():.3f}, "
              f"mean |Δ log p| {(logp - logp_fast).abs().mean():.4f} nats, Σ log p {logp.sum():.1f} vs "
              f"{logp_fast.sum():.1f}, mean KL(float32 ‖ fast) {kl.mean():.4f} nats; entropy of float32 "
              f"{entropy.mean():.2f} nats")  # fmt: skip


@torch.inference_mode()
def compare_wavlm(options) -> None:
    torch.manual_seed(0)
    encoder = WavLMEncoder(WAVLM_LARGE_CONFIG)
    fast = copy.deepcopy(encoder)
    fast.fast = make_fast(fast.model, True, weight_bound=False, keep_float32=(POSITIONAL_CONV,))  # as from_checkpoint
    wav = 0.1 * torch.randn(int(options.seconds * 16000))
    features, features_fast = encoder(wav, 16000), fast(wav, 16000)
    seconds = interleaved_medians({"f32": lambda: encoder(wav, 16000), "fast": lambda: fast(wav, 16000)},
                                  options.repeats)  # fmt: skip
    error = (features_fast - features).norm() / features.norm()
    cosine = F.cosine_similarity(features_fast, features, dim=-1)
    print(f"WavLM    {fast.fast:>5} {options.seconds:g} s of audio: float32 {seconds['f32']:.2f} s, fast "
          f"{seconds['fast']:.2f} s, speed-up {seconds['f32'] / seconds['fast']:.2f}x; layer-11 relative error "
          f"{error:.4f}, cosine similarity per frame: mean {cosine.mean():.5f}, min {cosine.min():.5f}")  # fmt: skip


@torch.inference_mode()
def compare_kernels(options) -> None:
    """Milliseconds for 24 matrices of 4096 × 1024 (400 MB in float32) in each format, at batch 3 and 500."""
    generator = torch.Generator().manual_seed(0)
    layers = [torch.nn.Linear(1024, 4096, bias=False) for _ in range(24)]
    for layer in layers:
        torch.nn.init.normal_(layer.weight, std=1 / 32, generator=generator)
    int8 = [Int8Linear(layer) for layer in layers]
    bf16 = [layer.weight.bfloat16() for layer in layers]
    for batch in (3, 500):
        x = torch.randn(batch, 1024, generator=generator)
        seconds = interleaved_medians({
            "float32": lambda: [layer(x) for layer in layers],
            "bfloat16": lambda: [F.linear(x.bfloat16(), weight) for weight in bf16],
            "int8": lambda: [layer(x) for layer in int8],
        }, options.repeats * 3)  # fmt: skip
        print(f"kernels, batch {batch:>3}: " + ", ".join(f"{name} {1e3 * s:.1f} ms" for name, s in seconds.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=100, help="generated tokens per row (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each model (the median counts)")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio for the WavLM timing (default 10)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--skip-wavlm", action="store_true")
    parser.add_argument("--kernels-only", action="store_true", help="only time the matrix products per format")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; fast=True picks "
          f"{choose_format(True, 'cpu', True)} for the LMs, {choose_format(True, 'cpu', False)} for WavLM")  # fmt: skip
    compare_kernels(options)
    if options.kernels_only:
        return
    compare_memory()
    for name, build in (("unit LM", unit_lm), ("ELLA-V", ellav)):
        compare_language_model(name, build(), options)  # one model in memory at a time
    if not options.skip_wavlm:
        compare_wavlm(options)


if __name__ == "__main__":
    main()
