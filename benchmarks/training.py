"""Training speed of the unit LM and ELLA-V: tokens/s and achieved FLOP/s of one optimizer step.

Each preset's model (``dpslm_utils.training.PRESETS``; k = 500) is built with the trainer's dropout
and loss, and runs full training steps (packed forward, backward, gradient
clipping, AdamW) on random token chunks of the preset's ``chunk_size`` (1024 for ELLA-V, whose
utterances are about that long). bf16 autocast on CUDA, float32 on CPU, as the trainer.

FLOPs per step follow the usual count for a decoder (Kaplan et al. / PaLM appendix B):
``6 · N · tokens`` for the weight matrices (N = parameters excluding the embedding table, forward +
backward) plus ``6 · n_layers · T · dim`` per token for attention scores and values (PaLM's
``12 · L · T · d``, halved because only the causal half counts). Achieved FLOP/s = that count /
measured time; each step is timed after ``--warmup`` untimed steps, median of ``--steps``.

    python benchmarks/training.py                           # tiny and released presets, CPU
    python benchmarks/training.py --device cuda             # the same on a GPU
    python benchmarks/training.py --preset released --batch-size 1   # fewer sequences per step
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dpslm_utils import training
from dpslm_utils.transformer import ModelArgs, Transformer

K = 500


def step_flops(model: Transformer, tokens: int, seq_len: int) -> float:
    args = model.args
    matrices = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("tok_embeddings"))
    return 6 * matrices * tokens + 6 * args.n_layers * seq_len * args.dim * tokens


def measure(task: str, preset: str, device: torch.device, batch_size: int | None, steps: int, warmup: int) -> dict:
    config = training.resolve_config(task, preset, K, {})
    batch_size = batch_size or config["batch_size"]
    seq_len = config["chunk_size"] or 1024
    vocab = K + 1 if task == "ulm" else 4 + K + 4096
    torch.manual_seed(0)
    model = Transformer(ModelArgs(**training._model_sizes(config), vocab_size=vocab), output_bias=task == "ellav",
                        dropout=config["dropout"]).to(device)  # fmt: skip
    loss_fn = training._PackedLoss(model, ignore_index=-100)
    optimizer = training._optimizer(model, config, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    src = torch.randint(vocab, (batch_size * seq_len,), device=device)
    tgt = torch.randint(vocab, (batch_size * seq_len,), device=device)
    mask = torch.ones_like(src, dtype=torch.bool)
    seqlens = [seq_len] * batch_size
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            loss, _ = loss_fn(src, tgt, mask, seqlens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    tokens = batch_size * seq_len
    parameters = sum(p.numel() for p in model.parameters())
    return dict(task=task, preset=preset, parameters=parameters, batch=f"{batch_size} x {seq_len}", seconds=seconds,
                tokens_per_s=tokens / seconds, tflops=step_flops(model, tokens, seq_len) / seconds / 1e12)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", choices=["tiny", "released", "both"], default="both")
    parser.add_argument("--task", choices=["ulm", "ellav", "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: the preset's; "
                        "on CPU the released preset uses 1 unless given)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| task | preset | parameters | batch (seqs x tokens) | s / step | tokens/s | achieved TFLOP/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for preset in ("tiny", "released") if args.preset == "both" else (args.preset,):
        for task in ("ulm", "ellav") if args.task == "both" else (args.task,):
            batch = args.batch_size or (1 if preset == "released" and device.type == "cpu" else None)
            r = measure(task, preset, device, batch, args.steps, args.warmup)
            print(f"| {r['task']} | {r['preset']} | {r['parameters'] / 1e6:.1f}M | {r['batch']} | {r['seconds']:.3f} | "
                  f"{r['tokens_per_s']:,.0f} | {r['tflops']:.4f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
