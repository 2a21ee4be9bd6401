"""What one utterance costs in ``dpslm wer`` (and ``dpslm say``), per stage, at the released sizes.

The models are built in memory at the released sizes with random weights (WavLM Large, an ELLA-V of
dim 1024 and 12 layers for k = 500, the 40 Hz WavTokenizer); the weights do not change the cost of a
step. For ``--seconds`` of speech it times, best of ``--repeats``:

* WavLM Large layer-11 features + DPDP (k = 500, λ = 4500, the paper's 25 nearest codes);
* ELLA-V: a trained model writes about 40 codes per second of speech plus a unit token and an EOP
  per unit (``--units-per-second``, 29 for k = 500, λ = 4500), so it runs exactly that many decoding
  steps (random weights would not stop on their own); one utterance alone, and ``--batch`` utterances
  in one batch (per utterance: batch time / batch), as ``resynthesis_wer`` does;
* the WavTokenizer decoder for the 40 Hz codes.

Real-time factor = seconds of compute / seconds of speech. The ASR (Whisper) comes on top.

    python benchmarks/resynthesis.py                 # 10 s of speech, batch 8
    python benchmarks/resynthesis.py --quick         # 2 s, batch 2: a smoke test
"""

from __future__ import annotations

import argparse
import time

import torch

from dpslm_utils.ellav import ELLAV, unit_tokenizer
from dpslm_utils.quantize import DPDPQuantizer
from dpslm_utils.random_tiny import random_transformer
from dpslm_utils.registry import PAPER_NUM_NEIGHBORS
from dpslm_utils.transformer import RELEASED_DIMS, ModelArgs
from dpslm_utils.wavlm import WAVLM_LARGE_CONFIG, WavLMEncoder
from dpslm_utils.wavtokenizer import CONFIGS, WavTokenizer

K, LMBDA, CODES_PER_SECOND = 500, 4500, 40


def best_of(repeats: int, function) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="speech per utterance (default 10)")
    parser.add_argument("--units-per-second", type=float, default=29.0, help="deduplicated units per second")
    parser.add_argument("--batch", type=int, default=8, help="utterances per ELLA-V batch (default 8)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 s of speech, batch 2, one repeat")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    options = parser.parse_args()
    if options.quick:
        options.seconds, options.batch, options.repeats = 2.0, 2, 1
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.manual_seed(0)

    encoder = WavLMEncoder(WAVLM_LARGE_CONFIG).eval()
    quantizer = DPDPQuantizer(torch.randn(K, 1024), LMBDA, PAPER_NUM_NEIGHBORS[K])
    tokenizer = unit_tokenizer(K)
    args = ModelArgs(**RELEASED_DIMS, vocab_size=len(tokenizer["token_to_id_dict"]))
    ellav = ELLAV(random_transformer(args, output_bias=True, seed=2), tokenizer)
    vocoder = WavTokenizer(CONFIGS["small_600_24k_4096"]).eval()

    wav = 0.1 * torch.randn(1, int(16000 * options.seconds))
    units = torch.unique_consecutive(torch.randint(0, K, (int(options.units_per_second * options.seconds),)))
    steps = int(CODES_PER_SECOND * options.seconds + 2 * len(units))
    codes = torch.randint(0, 4096, (1, int(CODES_PER_SECOND * options.seconds)))

    def ellav_steps(batch: int) -> None:
        ellav.generate_tokens([units] * batch, max_tokens=steps, temperature=1.0, top_p=0.0, seed=0)

    timings = {
        "WavLM + DPDP": best_of(options.repeats, lambda: quantizer(encoder(wav, 16000, layer=11))),
        "ELLA-V, one utterance": best_of(options.repeats, lambda: ellav_steps(1)),
        f"ELLA-V, batch of {options.batch} (per utterance)": best_of(options.repeats, lambda: ellav_steps(options.batch))
        / options.batch,
        "WavTokenizer decode": best_of(options.repeats, lambda: vocoder.decode(codes)),
    }
    print(f"CPU, {torch.get_num_threads()} threads, float32, released sizes, random weights; {options.seconds:g} s of "
          f"speech, {len(units)} units, {steps} ELLA-V steps, {codes.shape[1]} codes")  # fmt: skip
    print(f"{'stage':40} {'seconds':>8} {'real-time factor':>17}")
    for stage, seconds in timings.items():
        print(f"{stage:40} {seconds:>8.2f} {seconds / options.seconds:>17.2f}")
    one = timings["WavLM + DPDP"] + timings["WavTokenizer decode"]
    batched = one + timings[f"ELLA-V, batch of {options.batch} (per utterance)"]
    print(f"{'per utterance, ELLA-V batched':40} {batched:>8.2f} {batched / options.seconds:>17.2f}")
    print(f"{'per utterance, ELLA-V alone':40} {one + timings['ELLA-V, one utterance']:>8.2f} "
          f"{(one + timings['ELLA-V, one utterance']) / options.seconds:>17.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
