"""The demo (``dpslm demo``, ``scripts/demo.sh``): the bundled example recording through the whole pipeline.

It encodes the recording into units, resynthesizes it twice, scores a word against a non-word and draws what
happened (``demo.png``). With random weights (offline) it adds what is real without any weights: log-mel
features, DPDP on the shipped log-mel codebook and Griffin-Lim (``weightfree_*.wav``, ``rate_distortion.png``).
Figures are drawn on their own ``Figure`` (no pyplot window, whatever the backend).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from matplotlib.figure import Figure

from . import plots
from .audio import example_audio, save_audio
from .checkpoints import RANDOM_WEIGHTS_MESSAGE, WEIGHTS_ENV, CheckpointError, using_random_weights
from .codebooks import feature_codebook
from .features import feature_encoder, resynthesize_units
from .pipeline import DPSLM, EncodedSpeech, Synthesis
from .quantize import deduplicate, dpdp
from .rates import RatePoint, lambda_for_rate, rate_distortion
from .tree_encoding import units_text

DEMO_UNITS_PER_SECOND = (20.0, 10.0, 5.0)
"""Rates of the offline demo's weight-free resyntheses: λ found on the example by lambda_for_rate (within 10 %)."""
DEMO_LAMBDAS = (0.0, 100.0, 1000.0, 3000.0, 10000.0)
"""λ of the offline demo's rate-distortion figure (log-mel λ: squared log-mel distance)."""


def run_demo(out: Path, k: int, lmbda: float, device: str | None = None, seed: int = 0, weights: str = "auto") -> None:
    """The demo into the folder ``out`` (which exists). ``weights``: "pretrained", "random-tiny", or "auto": the
    official checkpoints, or random tiny weights when they cannot be downloaded (said on stdout)."""
    if weights != "auto":
        os.environ[WEIGHTS_ENV] = weights
    try:
        return _demo(out, k, lmbda, device, seed)
    except CheckpointError as e:
        if weights != "auto":
            raise
        print(f"\nThe official checkpoints could not be downloaded:\n{e}\n")
        print("=> Running the demo with RANDOM TINY WEIGHTS instead: every step runs, but the units, "
              "scores and audio are meaningless.\n")
        os.environ[WEIGHTS_ENV] = "random-tiny"
        return _demo(out, k, lmbda, device, seed)


def _demo(out: Path, k: int, lmbda: float, device: str | None, seed: int) -> None:
    model = DPSLM.from_pretrained(k, lmbda, device=device)
    print(model)
    wav, sr = example_audio("librispeech")

    encoded = model.encode(wav, sr)
    seconds = wav.shape[-1] / sr
    print(f"\n{seconds:.2f} s of speech -> {len(encoded.frame_units)} frames -> {len(encoded.units)} units "
          f"({len(encoded.units) / seconds:.1f} units/s) with k={model.k}, lmbda={model.lmbda:g}:")
    print(units_text(encoded.units))
    (out / "units.txt").write_text(units_text(encoded.units) + "\n")

    speech = model.synthesize(encoded.units, n=2, seed=seed)
    for i, s in enumerate(speech):
        save_audio(out / f"resynthesis_{i}.wav", s.wav, s.sample_rate)
    save_audio(out / "original.wav", wav, sr)

    word, nonword = (example_audio(name) for name in ("manufacture", "manufelture"))
    scores = {name: model.loglikelihood(*audio) for name, audio in (("manufacture", word), ("manufelture", nonword))}
    print("\nunit-LM log-likelihood (nats):", ", ".join(f"{n}: {v:.2f}" for n, v in scores.items()))

    demo_figure(wav, sr, encoded, speech, model.k, model.lmbda).savefig(out / "demo.png", dpi=110)
    print(f"\nwrote {out}/units.txt, original.wav, resynthesis_0.wav, resynthesis_1.wav and demo.png")
    if using_random_weights():
        print(f"NOTE: {RANDOM_WEIGHTS_MESSAGE}")
    if model.random_weights:
        print("      units.txt, resynthesis_0.wav, resynthesis_1.wav, demo.png and the log-likelihoods come from these "
              "random models: the resyntheses are noise.")
        weight_free_demo(out, wav, sr)


def demo_figure(wav: torch.Tensor, sample_rate: int, encoded: EncodedSpeech, speech: list[Synthesis], k: int,
                lmbda: float) -> Figure:  # fmt: skip
    """The original's spectrogram with its DPDP units, above the spectrogram of each resynthesis."""
    fig = Figure(figsize=(12, 8), layout="constrained")
    axes = fig.subplots(1 + len(speech), 1)
    plots.plot_segmentation(wav, sample_rate, encoded.frame_units, ax=axes[0],
                            title=f"original with DPDP units (k={k}, λ={lmbda:g})")
    for ax, (i, s) in zip(axes[1:], enumerate(speech)):
        plots.plot_spectrogram(s.wav, s.sample_rate, ax=ax, title=f"resynthesis {i} (ELLA-V + WavTokenizer)")
    plots.mark_random_weights(fig)
    return fig


def weight_free_demo(out: Path, wav: torch.Tensor, sample_rate: int) -> None:
    """Units you can hear without any weights: log-mel features, DPDP on the shipped log-mel codebook, each
    frame's centroid put back, Griffin-Lim. Writes ``weightfree_*.wav`` and ``rate_distortion.png`` into ``out``."""
    encoder, codebook = feature_encoder("fbank"), feature_codebook("fbank")
    features = encoder(wav, sample_rate)
    lambdas = [lambda_for_rate(features, codebook, rate, rtol=0.1) for rate in DEMO_UNITS_PER_SECOND]
    points = {p.lmbda: p for p in rate_distortion(features, codebook, sorted({*DEMO_LAMBDAS, *lambdas}))}
    print("\nWEIGHT-FREE resynthesis: no model weights at all (80-band log-mel features, DPDP on the shipped "
          "k=100 log-mel codebook, each frame's centroid put back, Griffin-Lim):")
    save_audio(out / "weightfree_logmel.wav", encoder.invert(features), encoder.sample_rate)
    print("  weightfree_logmel.wav: the log-mel spectrogram itself, inverted without units (Griffin-Lim alone)")
    for lmbda in lambdas:
        units, durations = deduplicate(dpdp(features, codebook, lmbda))
        name = f"weightfree_lambda_{lmbda:.0f}.wav"
        save_audio(out / name, resynthesize_units(units, durations, codebook, encoder), encoder.sample_rate)
        point = points[lmbda]
        print(f"  {name}: λ = {lmbda:.4g}, {point.units_per_second:.1f} units/s, {point.bits_per_second:.0f} bits/s")
    print("  It sounds robotic (no neural vocoder; Griffin-Lim guesses the phase), but it is real: the bigger λ, "
          "the fewer and longer the units and the more the sounds smear.")
    rate_distortion_figure(list(points.values())).savefig(out / "rate_distortion.png", dpi=110)
    print(f"  rate_distortion.png: distortion against units/s and bits/s for these λ and {', '.join(f'{x:g}' for x in DEMO_LAMBDAS)}")


def rate_distortion_figure(points: list[RatePoint]) -> Figure:
    """:func:`~dpslm_utils.plots.plot_rate_distortion` of the example's weight-free units, titled."""
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    plots.plot_rate_distortion(points, axes=fig.subplots(1, 2))
    fig.suptitle("weight-free units of the example: log-mel + DPDP, k = 100 (no model weights)")
    return fig
