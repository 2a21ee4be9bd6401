"""Small seeded random models for ``DPSLM_WEIGHTS=random-tiny``, written in the official file formats.

Offline (CI, a first look, no network) every loader still runs its real loading code: instead of
downloading a release, :func:`checkpoints.load_pretrained <dpslm_utils.checkpoints.load_pretrained>`
asks the writer of the same *family* for a checkpoint and reads that file with the family's own
``from_checkpoint``. Importing this module registers its :data:`WRITERS` with the loader
(:func:`checkpoints.register_random_writers <dpslm_utils.checkpoints.register_random_writers>`); the
loader imports it through its entry point (``pyproject.toml``), never by name. Each writer builds the
released architecture at a tiny size from a fixed seed, so every run gives the same models and the same
numbers.

Random weights alone make a pipeline that runs but whose stages do not fit together (features in a
narrow cone, one unit per utterance, codec tokens that never end a unit). So each writer also shapes
its model a little, as training would: gains on the residual stream (WavLM), a codebook drawn from
real features (k-means), peaked outputs and a likely end-of-unit token (ELLA-V), a codebook around
the encoder's outputs (WavTokenizer). The outputs still carry no meaning.

This module sits above the stages (the codebook writer runs the random WavLM on the bundled example
recordings); the stage modules never import it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from . import checkpoints, ellav, phones, ulm
from .audio import BUNDLED_EXAMPLES, bundled_example
from .registry import US_ARPA_PHONES
from .transformer import ModelArgs, Transformer
from .wavlm import WAVLM_LARGE_CONFIG, WavLMEncoder, build_torchaudio_wavlm, microsoft_state_dict
from .wavtokenizer import CONFIGS as WAVTOKENIZER_RELEASES
from .wavtokenizer import SAMPLE_RATE as CODEC_SAMPLE_RATE
from .wavtokenizer import WavTokenizer, lightning_state_dict

# -- the Mistral-style decoder (unit LM and ELLA-V) ----------------------------------------------

TRANSFORMER_DIMS = dict(dim=64, n_layers=2, head_dim=16, hidden_dim=128, n_heads=4, n_kv_heads=2,
                        norm_eps=1e-6, rope_theta=10000.0)  # fmt: skip
"""Decoder size of the random unit LM and ELLA-V (the released ones: ``transformer.RELEASED_DIMS``)."""

UNIT_LM_SEED = 3003
ELLAV_SEED = 4004
ELLAV_OUTPUT_SCALE, ELLAV_EOP_BOOST = 3.0, 10.0
"""ELLA-V's output weights are scaled (peaked codec distributions, as a trained model's) and its EOP
bias raised, so that units get a varying number of codec tokens, about 3 on average, both greedily
and with the default sampling (temperature 1, top_p 0.8)."""


def random_transformer(args: ModelArgs, output_bias: bool, seed: int) -> Transformer:
    """A seeded random decoder (the global RNG is left untouched).

    Linear weights ~ N(0, 1/fan_in), embeddings ~ N(0, 1), norm weights ~ 1 + N(0, 0.1²) and output
    bias ~ N(0, 0.02²): every tensor carries information, so a loader that mixes them up is noticed.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = Transformer(args, output_bias)
    state = {}
    for name, param in model.state_dict().items():  # the checkpoints' tensors, in their order
        noise = torch.randn(param.shape, generator=generator)
        if name.endswith("norm.weight"):
            state[name] = 1 + 0.1 * noise
        elif name == "output.bias":
            state[name] = 0.02 * noise
        elif name == "tok_embeddings.weight":
            state[name] = noise
        else:
            state[name] = noise / math.sqrt(param.shape[1])
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def write_unit_lm(path: Path, k: int) -> None:
    """A random unit LM over k units in the Mistral-ULM format ``{"model_args", "model_state_dict"}``."""
    args = ModelArgs(**TRANSFORMER_DIMS, vocab_size=k + 1)
    model = random_transformer(args, output_bias=False, seed=UNIT_LM_SEED + k)
    checkpoints.save_atomically(ulm.official_checkpoint(model), path)


def write_ellav(path: Path, k: int, phones: tuple[str, ...] | None = None) -> None:
    """A random ELLA-V for k units (or for ``phones``) in the official format ``{"model_args", "tokenizer", "model_state"}``.

    The output biases of UNK, BOS, EOS and the unit tokens are set to -30 (a trained model never
    emits them); the output weights are scaled and EOP's bias raised (see :data:`ELLAV_EOP_BOOST`).
    """
    tokenizer = ellav.unit_tokenizer(k, phones)
    token_to_id = tokenizer["token_to_id_dict"]
    args = ModelArgs(**TRANSFORMER_DIMS, vocab_size=len(token_to_id))
    model = random_transformer(args, output_bias=True, seed=ELLAV_SEED + k)
    with torch.no_grad():
        model.output.weight *= ELLAV_OUTPUT_SCALE
        bias = model.output.bias
        units = range(len(ellav.SPECIAL_TOKENS), len(ellav.SPECIAL_TOKENS) + tokenizer["num_phone_types"])
        never_emitted = [token_to_id["UNK"], token_to_id["BOS"], token_to_id["EOS"], *units]
        bias[never_emitted] = -30.0
        bias[token_to_id["EOP"]] += ELLAV_EOP_BOOST
    checkpoints.save_atomically(ellav.official_checkpoint(model, tokenizer), path)


# -- the phone toplines: phone LM (+ its tokenizer JSON) and phone ELLA-V -------------------------

PHONE_LM_SEED = 5005


def write_phone_lm(path: Path) -> None:
    """A random phone LM over :data:`~dpslm_utils.registry.US_ARPA_PHONES` (+ BOS, UNK), Mistral-ULM format."""
    args = ModelArgs(**TRANSFORMER_DIMS, vocab_size=2 + len(US_ARPA_PHONES))
    model = random_transformer(args, output_bias=False, seed=PHONE_LM_SEED)
    checkpoints.save_atomically(ulm.official_checkpoint(model), path)


def write_phone_lm_tokenizer(path: Path) -> None:
    """The phone LM's tokenizer JSON (``us_arpa_tokenizer.json`` format): BOS 0, UNK 1, then the phones."""
    text = json.dumps(phones.official_tokenizer(US_ARPA_PHONES), indent=4)
    checkpoints.write_atomically(path, lambda tmp: tmp.write_text(text))


def write_phone_ellav(path: Path) -> None:
    """A random phone ELLA-V: :func:`write_ellav` with the ARPAbet phones in place of units."""
    write_ellav(path, len(US_ARPA_PHONES), US_ARPA_PHONES)


# -- WavLM and its k-means codebooks -------------------------------------------------------------

WAVLM_CONFIG: dict[str, Any] = {
    **WAVLM_LARGE_CONFIG,
    "conv_feature_layers": "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
    "encoder_layers": 12,
    "encoder_embed_dim": 64,
    "encoder_ffn_embed_dim": 128,
    "encoder_attention_heads": 4,
}
"""WavLM Large's layout at tiny size (0.46M parameters): same strides and 320-sample hop, 12 layers
so that layer 11 exists, 64-d features."""

WAVLM_SEED = 11
WAVLM_GAIN = 12.0
"""Gain on every write into the residual stream, so that layer-11 features spread widely enough for
the released λ values (600 to 9000) to give segment lengths of the same order as with WavLM Large."""
_RESIDUAL_WRITERS = ("feature_projection.projection.", "pos_conv_embed.conv.bias", "attention.out_proj.",
                     "feed_forward.output_dense.")

CODEBOOK_SEED = 500
CODEBOOK_JITTER = 0.25
"""Codebook ``[K, 64]``: K frames of the random WavLM's layer-11 features of the bundled example
recordings, drawn with replacement under :data:`CODEBOOK_SEED`, plus Gaussian noise of
``CODEBOOK_JITTER`` × the features' per-dimension standard deviation (so that K may exceed the
number of frames)."""


def write_wavlm(path: Path) -> None:
    """A random :data:`WAVLM_CONFIG` WavLM in Microsoft's format ``{"cfg", "model"}``.

    torchaudio's default init (unlike the original's N(0, 0.02) linear layers) already gives every
    layer a visible effect; on top, every parameter it leaves constant (norm gains and biases, linear
    biases, the gates' ``grep_a``) gets seeded noise, so that each tensor of the file matters. Every
    layer that writes into the residual stream is then scaled by :data:`WAVLM_GAIN`. ``mask_emb`` is
    written too (uniform, as the original inits it), for the exact official layout.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(WAVLM_SEED)
        model = build_torchaudio_wavlm(WAVLM_CONFIG)
        with torch.no_grad():
            for parameter in model.parameters():
                first = parameter.flatten()[0]
                if torch.all(parameter == first):  # e.g. LayerNorm gains (all 1) and biases (all 0)
                    noise_std = 0.1 * first.abs() if first != 0 else 0.02
                    parameter.add_(noise_std * torch.randn_like(parameter))
            for name, parameter in model.named_parameters():
                if any(writer in name for writer in _RESIDUAL_WRITERS):
                    parameter.mul_(WAVLM_GAIN)
        state_dict = {"mask_emb": torch.rand(WAVLM_CONFIG["encoder_embed_dim"])}
    state_dict |= microsoft_state_dict(model, WAVLM_CONFIG)
    checkpoints.save_atomically({"cfg": dict(WAVLM_CONFIG), "model": state_dict}, path)


def write_codebook(path: Path, k: int) -> None:
    """A codebook ``{"codebook": [k, 64]}`` fitted to the random WavLM (see :data:`CODEBOOK_JITTER`).

    The centres are jittered copies of real layer-11 feature frames, so that DPDP on these features
    of speech spreads over many units, and the released λ values give segment lengths of the right
    order, instead of collapsing onto the few entries nearest to the features.
    """
    encoder = WavLMEncoder.from_pretrained()
    recordings = [bundled_example(name) for name in BUNDLED_EXAMPLES]
    features = torch.cat([encoder(wav, sample_rate, layer=11) for wav, sample_rate in recordings])  # [T, 64]
    generator = torch.Generator().manual_seed(CODEBOOK_SEED)
    frames = torch.randint(features.shape[0], (k,), generator=generator)
    noise = torch.randn(k, features.shape[1], generator=generator)
    codebook = features[frames] + CODEBOOK_JITTER * features.std(dim=0) * noise
    checkpoints.save_atomically({"codebook": codebook.float().contiguous()}, path)


# -- WavTokenizer ---------------------------------------------------------------------------------

WAVTOKENIZER_CONFIGS = {
    name: replace(config, n_filters=4, dimension=64, dim=64, intermediate_dim=128, num_layers=2)
    for name, config in WAVTOKENIZER_RELEASES.items()
}
"""Strides, n_fft and the 4096 codes as released, all widths shrunk."""

WAVTOKENIZER_SEED = 0


def write_wavtokenizer(path: Path, name: str = "small_600_24k_4096") -> None:
    """A random WavTokenizer (:data:`WAVTOKENIZER_CONFIGS`) in the official Lightning format.

    The codebook is drawn around the random encoder's output on a probe chirp (its mean ± its
    standard deviation per dimension), as the original fits it to data by k-means, so that different
    frames of real audio pick different codes.
    """
    if name not in WAVTOKENIZER_CONFIGS:
        raise ValueError(f"unknown WavTokenizer config {name!r}; choose from {sorted(WAVTOKENIZER_CONFIGS)}")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(WAVTOKENIZER_SEED)
        model = WavTokenizer(WAVTOKENIZER_CONFIGS[name], name)
        t = torch.arange(2 * CODEC_SAMPLE_RATE) / CODEC_SAMPLE_RATE
        probe = 0.3 * torch.sin(2 * math.pi * (200 + 400 * t) * t) + 0.05 * torch.randn_like(t)
        embeddings = model.encoder(probe[None, None])[0]  # [dimension, frames]
        model.codebook.normal_().mul_(embeddings.std(1)).add_(embeddings.mean(1))
    checkpoints.save_atomically({"state_dict": lightning_state_dict(model)}, Path(path))


# -- one writer per checkpoint family ------------------------------------------------------------

WRITERS: dict[str, Callable[..., None]] = {
    "wavlm": write_wavlm,
    "codebook": write_codebook,
    "unit_lm": write_unit_lm,
    "ellav": write_ellav,
    "wavtokenizer": write_wavtokenizer,
    "phone_lm": write_phone_lm,
    "phone_lm_tokenizer": write_phone_lm_tokenizer,
    "phone_ellav": write_phone_ellav,
}
"""Checkpoint family -> ``writer(path, **arguments)``."""

checkpoints.register_random_writers(WRITERS)


def write(family: str, path: Path, **arguments: Any) -> None:
    """Write the random-tiny checkpoint of ``family`` (a key of :data:`WRITERS`) to ``path``."""
    checkpoints.random_writer(family)(path, **arguments)
