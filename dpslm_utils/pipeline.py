"""The whole DP-SLM pipeline for one (k, λ): the only module that knows every stage.

    speech -> WavLMEncoder -> DPDPQuantizer -> deduplicate -> UnitLM (score / continue)
                                                           -> ELLAV -> WavTokenizer -> speech
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from . import checkpoints
from .checkpoints import weights_mode
from .checks import MAX_NEW_TOKENS, check_count, check_real, check_sampling, check_seed
from .codebooks import load_codebook
from .ellav import ELLAV, MAX_CODEC_TOKENS_PER_PHONE, Alignment
from .quantize import DPDPQuantizer, deduplicate, dpdp_batch
from .registry import DEFAULT_K, DEFAULT_LMBDA, check_combination
from .ulm import UnitLM
from .wavlm import WavLMEncoder
from .wavtokenizer import WavTokenizer

VOCODER = "small_600_24k_4096"  # the 40 Hz codec every released ELLA-V model predicts
FEATURE_LAYER = 11


@dataclass(frozen=True)
class EncodedSpeech:
    """Speech as DPDP units."""

    units: torch.Tensor
    """LongTensor ``[N]``: deduplicated units (what the unit LM and ELLA-V read)."""
    durations: torch.Tensor
    """LongTensor ``[N]``: frames (20 ms each) per unit; sums to the number of frames T."""
    frame_units: torch.Tensor
    """LongTensor ``[T]``: one unit per 50 Hz frame, before deduplication."""
    frame_rate: float = 50.0


@dataclass(frozen=True)
class Synthesis:
    """Speech made from units by ELLA-V + WavTokenizer."""

    wav: torch.Tensor
    """FloatTensor ``[samples]`` at ``sample_rate`` (24 kHz)."""
    sample_rate: int
    codes: torch.Tensor
    """LongTensor ``[L]``: the 40 Hz WavTokenizer codes ELLA-V generated."""
    alignment: Alignment
    """How many codes each unit received."""
    finished: bool
    """False when ELLA-V ran out of ``max_tokens`` before the last unit."""


@dataclass(frozen=True)
class Continuation:
    """A spoken prompt continued by the unit LM and voiced by ELLA-V + WavTokenizer."""

    prompt_units: torch.Tensor
    """LongTensor ``[N]``: the deduplicated units of the prompt."""
    new_units: torch.Tensor
    """LongTensor ``[M]``: the units the unit LM sampled after them (consecutive repeats removed)."""
    speech: Synthesis
    """The prompt units followed by the new units, as speech."""


def _check_synthesis(temperature: float, top_p: float, seed: int | None, max_codec_tokens_per_phone: int) -> tuple:
    """The sampling arguments of a synthesis, checked: ``(seed, max_codec_tokens_per_phone)``."""
    check_sampling(temperature, top_p)
    return check_seed(seed), check_count("max_codec_tokens_per_phone", max_codec_tokens_per_phone, minimum=0)


def synthesize_batch(ellav: ELLAV, vocoder: WavTokenizer, prompts: list, temperature: float = 1.0, top_p: float = 0.8,
                     seed: int | None = None, max_codec_tokens_per_phone: int = MAX_CODEC_TOKENS_PER_PHONE) -> list[Synthesis]:
    """Speech for each prompt (units, or phones for a phone ELLA-V): ELLA-V codes in one batch, then the vocoder."""
    seed, max_codec_tokens_per_phone = _check_synthesis(temperature, top_p, seed, max_codec_tokens_per_phone)
    prompts = [ellav.deduplicated_units(prompt) for prompt in prompts]
    # Each unit costs at most: its forced unit token, max + 1 codes (max + 2 for the first), one EOP.
    max_tokens = (max_codec_tokens_per_phone + 3) * max(len(prompt) for prompt in prompts) + 1
    codes, finished, alignments = ellav.generate(
        prompts, max_tokens=max_tokens, max_codec_tokens_per_phone=max_codec_tokens_per_phone,
        temperature=temperature, top_p=top_p, seed=seed,
    )
    return [
        Synthesis(vocoder.decode(c)[0].cpu() if len(c) else torch.zeros(0), vocoder.sample_rate, c, a, f)
        for c, a, f in zip(codes, alignments, finished)
    ]


def resolve_device(device: str | torch.device | None) -> str:
    """One name per device, so the shared models are loaded once: "cuda" -> "cuda:<current>", "cpu:0" -> "cpu"."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        return "cpu"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"CUDA is not available here, so device {str(device)!r} cannot be used (use 'cpu')")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


@functools.cache
def shared_encoder(device: str, weights: str, fast: bool | str = False) -> WavLMEncoder:
    """One WavLM per (resolved device, weights mode, fast format), shared by every pipeline in the process."""
    return WavLMEncoder.from_pretrained(device=device, fast=fast)


@functools.cache
def shared_vocoder(device: str, weights: str) -> WavTokenizer:
    """One WavTokenizer decoder per (resolved device, weights mode), shared by every pipeline in the process."""
    return WavTokenizer.from_pretrained(VOCODER, device=device)


class UnitEncoder:
    """Speech -> DPDP units: WavLM layer-11 features quantized by DPDP (the first half of DP-SLM)."""

    def __init__(self, encoder: WavLMEncoder, quantizer: DPDPQuantizer):
        self.encoder, self.quantizer = encoder, quantizer

    @classmethod
    def from_pretrained(cls, k: int = DEFAULT_K, lmbda: float = DEFAULT_LMBDA, device: str | torch.device | None = None,
                        num_neighbors: int | None = None, fast: bool | str = False) -> UnitEncoder:
        """Any released codebook (k in 100, 200, 500, 1000, 2000) with any λ >= 0; WavLM is shared.

        ``fast=True`` runs WavLM in reduced precision (see :meth:`WavLMEncoder.from_checkpoint`).
        """
        device = resolve_device(device)
        codebook = load_codebook(k, FEATURE_LAYER, device=device)
        return cls(shared_encoder(device, weights_mode(), fast), DPDPQuantizer(codebook, lmbda, num_neighbors))

    @property
    def random_weights(self) -> bool:
        return self.encoder.random_weights

    def encode(self, wav: torch.Tensor, sample_rate: int) -> EncodedSpeech:
        """Speech (mono, any rate) -> DPDP units: deduplicated, with durations, and per frame."""
        features = self.encoder(wav, sample_rate, layer=FEATURE_LAYER)
        return self._encoded(self.quantizer(features)[1])

    def encode_batch(self, wavs: list[torch.Tensor], sample_rate: int) -> list[EncodedSpeech]:
        """:meth:`encode` for several utterances at once (one padded WavLM batch, one batched DPDP)."""
        features = self.encoder.batch(wavs, sample_rate, layer=FEATURE_LAYER)
        q = self.quantizer
        return [self._encoded(u) for u in dpdp_batch(features, q.codebook, q.lmbda, q.num_neighbors)]

    def _encoded(self, frame_units: torch.Tensor) -> EncodedSpeech:
        units, durations = deduplicate(frame_units.cpu())
        return EncodedSpeech(units, durations, frame_units.cpu(), self.encoder.frame_rate)


class DPSLM:
    """Speech in, units, scores and speech out, for one (k, λ).

    Build it with :meth:`from_pretrained`; WavLM and the vocoder are shared between all pipelines on
    the same device, so a grid over (k, λ) loads them once.
    """

    def __init__(self, units: UnitEncoder, ulm: UnitLM, ellav: ELLAV, vocoder: WavTokenizer):
        if not units.quantizer.k == ulm.k == ellav.k:
            raise ValueError(f"k differs between stages: codebook {units.quantizer.k}, unit LM {ulm.k}, ELLA-V {ellav.k}")
        self.units, self.ulm, self.ellav, self.vocoder = units, ulm, ellav, vocoder
        self.k, self.lmbda = ulm.k, units.quantizer.lmbda

    @classmethod
    def from_pretrained(cls, k: int = DEFAULT_K, lmbda: float = DEFAULT_LMBDA, device: str | torch.device | None = None,
                        num_neighbors: int | None = None, hours: str = "1k", fast: bool | str = False) -> DPSLM:
        """Load (and cache) the released models for (k, λ); ``hours="60k"`` picks the big unit LM (k=500, λ=4500).

        ``num_neighbors=None`` quantizes with the exact DPDP optimum; pass
        ``dpslm_utils.PAPER_NUM_NEIGHBORS[k]`` (5 % of k) for the paper's restricted search.
        ``fast=True`` loads WavLM, the unit LM and ELLA-V in reduced precision (:mod:`dpslm_utils.fast`).
        """
        k, lmbda = check_combination(k, lmbda)
        device = resolve_device(device)
        return cls(
            units=UnitEncoder.from_pretrained(k, lmbda, device, num_neighbors, fast),
            ulm=UnitLM.from_pretrained(k, lmbda, hours=hours, device=device, fast=fast),
            ellav=ELLAV.from_pretrained(k, lmbda, device=device, fast=fast),
            vocoder=shared_vocoder(device, weights_mode()),
        )

    @property
    def random_weights(self) -> bool:
        return any(m.random_weights for m in (self.units, self.ulm, self.ellav, self.vocoder))

    def __repr__(self) -> str:
        return checkpoints.describe(self, k=self.k, lmbda=f"{self.lmbda:g}", device=self.units.encoder.device)

    # -- speech -> units ------------------------------------------------------------------------

    def encode(self, wav: torch.Tensor, sample_rate: int) -> EncodedSpeech:
        """Speech (mono, any rate) -> DPDP units: deduplicated, with durations, and per frame."""
        return self.units.encode(wav, sample_rate)

    def loglikelihood(self, wav: torch.Tensor, sample_rate: int) -> float:
        """log p(units of the speech) under the unit LM, in nats (higher = more speech-like to the LM)."""
        return self.ulm.loglikelihood(self.encode(wav, sample_rate).units)

    # -- units -> speech ------------------------------------------------------------------------

    def synthesize(self, units: torch.Tensor | list, n: int = 1, temperature: float = 1.0, top_p: float = 0.8,
                   seed: int | None = None,
                   max_codec_tokens_per_phone: int = MAX_CODEC_TOKENS_PER_PHONE) -> list[Synthesis]:
        """``n`` renditions of one unit sequence as 24 kHz speech (ELLA-V samples the codes, in one batch).

        ``max_codec_tokens_per_phone`` caps how long ELLA-V may dwell on one unit (25 ms per code).
        """
        n = check_count("n", n)
        _check_synthesis(temperature, top_p, seed, max_codec_tokens_per_phone)  # before touching the models
        return synthesize_batch(self.ellav, self.vocoder, [units] * n, temperature, top_p, seed, max_codec_tokens_per_phone)

    def resynthesize(self, wav: torch.Tensor, sample_rate: int, n: int = 1, temperature: float = 1.0,
                     top_p: float = 0.8, seed: int | None = None) -> list[torch.Tensor]:
        """Speech -> units -> ``n`` new 24 kHz waveforms ``[samples]`` saying the same units."""
        check_count("n", n)  # checked again by synthesize, but before the slow part
        check_seed(seed)
        check_sampling(temperature, top_p)
        units = self.encode(wav, sample_rate).units
        return [s.wav for s in self.synthesize(units, n, temperature, top_p, seed)]

    def continue_speech(self, wav: torch.Tensor, sample_rate: int, max_new_units: int = 50, n: int = 1,
                        temperature: float = 1.0, top_p: float = 1.0, top_k: int | None = None,
                        seed: int | None = None, vocoder_temperature: float = 1.0,
                        vocoder_top_p: float = 0.8) -> list[Continuation]:
        """Continue a spoken prompt: units -> unit LM samples ``max_new_units`` more -> speech, ``n`` times."""
        check_count("max_new_units", max_new_units, maximum=MAX_NEW_TOKENS)
        n, seed = check_count("n", n), check_seed(seed)
        check_sampling(temperature, top_p, top_k)
        check_real("vocoder_temperature", vocoder_temperature, minimum=0.0)
        check_real("vocoder_top_p", vocoder_top_p, 0.0, 1.0)
        prompt = self.encode(wav, sample_rate).units
        continuations = self.ulm.generate(prompt, max_new_units, temperature=temperature, top_p=top_p, top_k=top_k,
                                          n=n, seed=seed)
        results = []
        for i, new in enumerate(continuations):
            new = torch.unique_consecutive(torch.cat([prompt[-1:], new]))[1:]  # a repeat of the last unit merges
            speech_seed = None if seed is None else seed + i
            (speech,) = self.synthesize(torch.cat([prompt, new]), 1, vocoder_temperature, vocoder_top_p, speech_seed)
            results.append(Continuation(prompt, new, speech))
        return results
