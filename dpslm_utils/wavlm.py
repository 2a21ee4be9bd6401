"""WavLM features: 16 kHz speech -> hidden states of one transformer layer, 50 frames per second.

The network is torchaudio's WavLM (``torchaudio.models.wavlm_model``), which has the same
architecture as Microsoft's original and reproduces the original features (to within 1e-5 on the
reference fixtures). What this module adds:

* reading Microsoft's checkpoint format ``{"cfg": WavLMConfig fields, "model": state_dict}``: the
  architecture comes from ``cfg`` and every parameter is renamed to torchaudio's layout
  (:func:`_microsoft_names` is the one table of names);
* the feature extraction of the DP-SLM pipeline: resample to 16 kHz, pad 40 zeros on both sides,
  **no** waveform normalisation (although the Large ``cfg`` says ``normalize=True``: the codebooks and
  all downstream models were trained on un-normalised input), then the hidden state after
  transformer layer ``layer`` (1-based), before any final LayerNorm;
* batches of different lengths with a key padding mask, each result equal to the unbatched one.
"""

from __future__ import annotations

import ast
import functools
import math
import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torchaudio
from torch import Tensor, nn

from . import checkpoints, registry
from .audio import as_waveform, check_sample_rate, resample
from .checkpoints import CheckpointError
from .fast import make_fast

# Fields of the original ``WavLMConfig`` that define the network, with the original's defaults (a
# field missing from a checkpoint's cfg takes its default, as in the original loader). Other cfg
# fields (dropouts, masking, ``normalize``) do not change inference and are ignored.
_ORIGINAL_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default",
    "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "conv_bias": False,
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "relative_position_embedding": False,
    "num_buckets": 320,
    "max_distance": 1280,
    "gru_rel_pos": False,
}

WAVLM_LARGE_CONFIG: dict[str, Any] = {
    "extractor_mode": "layer_norm",
    "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "conv_bias": False,
    "encoder_layers": 24,
    "encoder_embed_dim": 1024,
    "encoder_ffn_embed_dim": 4096,
    "encoder_attention_heads": 16,
    "activation_fn": "gelu",
    "layer_norm_first": True,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "relative_position_embedding": True,
    "num_buckets": 320,
    "max_distance": 800,
    "gru_rel_pos": True,
}
"""The released WavLM Large (315M parameters): the network fields of its cfg."""

POSITIONAL_CONV = "encoder.transformer.pos_conv_embed"

SAMPLE_RATE = 16000
MAX_SECONDS = 60.0
"""Longest audio one :class:`WavLMEncoder` call accepts by default (``encoder.max_seconds`` changes it).
Attention memory grows with the square of the length (for WavLM Large about 2 GB at 60 s, 8 GB at
120 s: README "Limits"). Split longer recordings, e.g. at pauses."""
HOP_LENGTH = 320  # samples per frame: 16000 / 320 = 50 frames per second
RECEPTIVE_FIELD = 400  # samples seen by one frame of the conv stack
EDGE_PADDING = (RECEPTIVE_FIELD - HOP_LENGTH) // 2  # 40 zeros on each side, as the original
_CONV_KERNELS_AND_STRIDES = [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2  # every released WavLM
_TRAINING_ONLY_KEYS = ("mask_emb",)
_LEGACY_WEIGHT_NORM = {  # old ``weight_norm`` names (Microsoft's WavLM-Large.pt) -> parametrized names
    "encoder.pos_conv.0.weight_g": "encoder.pos_conv.0.parametrizations.weight.original0",
    "encoder.pos_conv.0.weight_v": "encoder.pos_conv.0.parametrizations.weight.original1",
}


def num_frames(num_samples: int, sample_rate: int = SAMPLE_RATE) -> int:
    """Frames the encoder returns for ``num_samples`` of audio at ``sample_rate`` (0 if too short).

    At 16 kHz: ``floor((N + 80 - 400) / 320) + 1``; other rates are first resampled to
    ``ceil(N * 16000 / sample_rate)`` samples, as ``torchaudio.functional.resample`` does.
    """
    if sample_rate <= 0 or num_samples < 0:
        raise ValueError(f"need num_samples >= 0 and sample_rate > 0, got {num_samples} and {sample_rate}")
    gcd = math.gcd(int(sample_rate), SAMPLE_RATE)
    resampled = -(-num_samples * (SAMPLE_RATE // gcd) // (sample_rate // gcd))
    return max(0, (resampled + 2 * EDGE_PADDING - RECEPTIVE_FIELD) // HOP_LENGTH + 1)


def padded_waveform(wav: Tensor | np.ndarray, sample_rate: int, device: torch.device | str | None = None,
                    reader: str = "WavLM", max_seconds: float | None = None) -> Tensor:
    """The waveform that 50 Hz frames are read from ``[samples + 80]``: mono float32 resampled to 16 kHz,
    with 40 zeros padded on both sides (no normalisation). Frame t then covers the 400 samples
    ``[320 t − 40, 320 t + 360)`` of the 16 kHz audio: :func:`num_frames` frames in all. Too short for
    one frame (under 320 samples at 16 kHz), not mono, or longer than ``max_seconds`` (checked before
    resampling): a ValueError that names ``reader``."""
    wav, sample_rate = as_waveform(wav), check_sample_rate(sample_rate)
    if wav.shape[0] != 1:
        raise ValueError(
            f"expected mono audio, got {wav.shape[0]} channels (shape {list(wav.shape)}); "
            "mix it down first with dpslm_utils.to_mono(wav)"
        )
    seconds = wav.shape[-1] / sample_rate
    if max_seconds is not None and seconds > max_seconds:
        raise ValueError(
            f"the audio is {seconds:.1f} s long; {reader} accepts at most {max_seconds:g} s per utterance "
            f"(attention memory grows with the square of the length). Split it, or raise "
            f"encoder.max_seconds if you have the memory"
        )
    wav = resample(wav.to(device), sample_rate, SAMPLE_RATE)[0]
    if num_frames(wav.shape[-1]) == 0:
        min_samples = RECEPTIVE_FIELD - 2 * EDGE_PADDING
        raise ValueError(
            f"the audio is too short: {wav.shape[-1]} samples at 16 kHz; {reader} needs at least "
            f"{min_samples} samples ({1000 * min_samples // SAMPLE_RATE} ms) for one frame"
        )
    return nn.functional.pad(wav, (EDGE_PADDING, EDGE_PADDING))


def each_waveform(wavs: list[Tensor | np.ndarray], work: Callable[[Tensor | np.ndarray], Any]) -> list:
    """``[work(wav) for wav in wavs]``; ValueError for an empty ``wavs``, and one that says which wav (``wavs[i]:``)
    was refused, so that a caller can skip it."""
    if not isinstance(wavs, (list, tuple)) or not wavs:
        raise ValueError("wavs must be a non-empty list of waveforms")
    results = []
    for i, wav in enumerate(wavs):
        try:
            results.append(work(wav))
        except ValueError as e:
            raise ValueError(f"wavs[{i}]: {e}" if len(wavs) > 1 else str(e)) from e
    return results


class WavLMEncoder(nn.Module):
    """WavLM feature extractor: ``encoder(wav, sample_rate, layer=11) -> FloatTensor[frames, dim]``.

    ``layer`` is 1-based: the hidden state after that transformer layer, before any final LayerNorm
    (the DP-SLM codebooks use layer 11 of WavLM Large). ``layer=None`` runs every layer and then,
    for pre-LayerNorm models such as Large, the encoder's final LayerNorm, like the original's
    ``output_layer=None``. (The original's ``output_layer=0`` quirk, all layers without the final
    LayerNorm, is the same as ``layer=num_layers`` here; 0 is rejected.)
    """

    sample_rate = SAMPLE_RATE
    frame_rate = SAMPLE_RATE // HOP_LENGTH
    max_seconds = MAX_SECONDS
    num_frames = staticmethod(num_frames)

    def __init__(self, config: dict[str, Any]):
        """A randomly initialised WavLM with the network fields of a WavLMConfig (as in
        :data:`WAVLM_LARGE_CONFIG`); trained weights come from ``from_checkpoint``/``from_pretrained``."""
        super().__init__()
        self.config = dict(config)
        self.dim: int = config["encoder_embed_dim"]
        self.num_layers: int = config["encoder_layers"]
        self.random_weights = False
        self.fast: str | None = None  # reduced-precision format (dpslm_utils.fast), None = as loaded
        self.model = build_torchaudio_wavlm(config)
        self.eval()

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: torch.device | str | None = None, fast: bool | str = False
    ) -> WavLMEncoder:
        """Load a checkpoint in Microsoft's format ``{"cfg": dict, "model": state_dict}``.

        Both positional-conv weight-norm layouts are accepted (``weight_g``/``weight_v`` and
        ``parametrizations.weight.original0/1``). ``mask_emb`` (training only) is ignored; any other
        missing or unexpected parameter is a CheckpointError that names it. ``fast=True``: reduced
        precision for faster encoding (bfloat16 where the CPU has it; see :mod:`dpslm_utils.fast`).
        """
        checkpoint = checkpoints.load_checkpoint(path)
        checkpoints.require_keys(checkpoint, ("cfg", "model"), path, "WavLM")
        config = _network_config(checkpoint["cfg"], path)
        with torch.device("meta"):  # skip the random init: every parameter is assigned below
            encoder = cls(config)
        state_dict = _to_torchaudio(checkpoint["model"], encoder.model, config, path)
        try:
            encoder.model.load_state_dict(state_dict, strict=True, assign=True)
        except RuntimeError as e:  # wrong shapes: the cfg does not describe these weights
            raise CheckpointError(f"{path}: the weights do not fit the architecture in its cfg: {e}") from e
        encoder.to(device or "cpu").eval()
        # bfloat16 for everything but the positional conv: its 128-tap sums lose too much (15 % error)
        encoder.fast = make_fast(encoder.model, fast, weight_bound=False, keep_float32=(POSITIONAL_CONV,))
        return encoder

    @classmethod
    def from_pretrained(cls, device: torch.device | str | None = None, fast: bool | str = False) -> WavLMEncoder:
        """The released WavLM Large (downloaded and cached), or a random tiny one with
        ``DPSLM_WEIGHTS=random-tiny`` (``fast``: see :meth:`from_checkpoint`)."""
        load = functools.partial(cls.from_checkpoint, device=device, fast=fast)
        return checkpoints.load_pretrained(load, registry.WAVLM_LARGE, "wavlm")

    # -- features ------------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, wav: Tensor | np.ndarray, sample_rate: int, layer: int | None = 11) -> Tensor:
        """Features ``[frames, dim]`` of one mono waveform ``[samples]`` or ``[1, samples]``."""
        return self.batch([wav], sample_rate, layer)[0]

    @torch.inference_mode()
    def batch(self, wavs: list[Tensor | np.ndarray], sample_rate: int, layer: int | None = 11) -> list[Tensor]:
        """Features ``[frames_i, dim]`` of several waveforms (one sample rate), each equal to the
        unbatched result up to float rounding.

        They run as one zero-padded batch whose padded frames are masked out of attention. Models
        with the "default" conv extractor (Base-style) run one waveform at a time instead: its
        GroupNorm normalises over time and would see the padding.
        """
        inputs = each_waveform(wavs, lambda wav: self.preprocess(wav, sample_rate))
        self._check_layer(layer)
        groups = [[x] for x in inputs] if self.config["extractor_mode"] == "default" else [inputs]
        features = []
        for group in groups:
            lengths = torch.tensor([len(x) for x in group], device=self.device)
            padded = nn.utils.rnn.pad_sequence(group, batch_first=True).to(self.dtype)
            hidden, frame_lengths = self._hidden_states(padded, lengths, layer)
            features += [h[:n].to(torch.float32, copy=True) for h, n in zip(hidden, frame_lengths.tolist())]
        return features

    def preprocess(self, wav: Tensor | np.ndarray, sample_rate: int) -> Tensor:
        """The waveform the conv stack receives ``[samples]``: :func:`padded_waveform` on the encoder's
        device. Audio longer than ``max_seconds`` (default :data:`MAX_SECONDS`) is refused with a ValueError."""
        return padded_waveform(wav, sample_rate, self.device, max_seconds=self.max_seconds)

    def _hidden_states(self, wav: Tensor, lengths: Tensor, layer: int | None) -> tuple[Tensor, Tensor]:
        """``wav [B, samples]`` with valid ``lengths [B]`` -> ``(features [B, frames, dim], frames [B])``."""
        x, frame_lengths = self.model.feature_extractor(wav, lengths)  # [B, T, C]
        encoder = self.model.encoder
        x = encoder.feature_projection(x)  # LayerNorm over C, Linear C -> dim
        padding = torch.arange(x.shape[1], device=x.device) >= frame_lengths[:, None]  # [B, T]
        x = x.masked_fill(padding[..., None], 0.0)  # as the original: zeros before the positional conv
        # Additive mask, -inf on padded keys, in the dtype of the position bias that torchaudio adds it to.
        key_padding_mask = torch.zeros_like(padding, dtype=x.dtype).masked_fill(padding, -math.inf)

        transformer = encoder.transformer
        x = x + transformer.pos_conv_embed(x.float()).to(x.dtype)  # float32 also under fast=True
        if not self.config["layer_norm_first"]:  # post-LN (Base): LayerNorm before the layers
            x = transformer.layer_norm(x)
        position_bias = None  # computed by layer 1, shared (un-gated) by every later layer
        for block in transformer.layers[: layer or self.num_layers]:
            x, position_bias = block(x, position_bias=position_bias, key_padding_mask=key_padding_mask)
        if layer is None and self.config["layer_norm_first"]:  # pre-LN (Large): final LayerNorm
            x = transformer.layer_norm(x)
        return x, frame_lengths

    def _check_layer(self, layer: int | None) -> None:
        if layer is None:
            return
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 1 <= layer <= self.num_layers:
            raise ValueError(
                f"layer must be an integer from 1 to {self.num_layers} (1-based transformer layer) or None "
                f"(all layers + final LayerNorm), got {layer!r}"
            )

    # -- description ---------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """float32, or bfloat16 after ``fast`` chose it (features are returned in float32 either way)."""
        return next(self.parameters()).dtype

    def __repr__(self) -> str:
        heads = self.config["encoder_attention_heads"]
        return checkpoints.describe(self, layers=self.num_layers, dim=self.dim, heads=heads, dtype=self.fast or self.dtype,
                                    device=self.device)  # fmt: skip


# -- architecture from the checkpoint's cfg --------------------------------------------------------


def _network_config(cfg: Any, path: str | os.PathLike) -> dict[str, Any]:
    """The network fields of a checkpoint's cfg (original defaults filled in), checked for support."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: 'cfg' should be a dict of WavLMConfig fields, got {type(cfg).__name__}")
    config = {name: cfg.get(name, default) for name, default in _ORIGINAL_DEFAULTS.items()}
    try:
        conv_layers = _parse_conv_layers(config["conv_feature_layers"])
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
    unsupported = []
    if config["extractor_mode"] not in ("default", "layer_norm"):
        unsupported.append(f"extractor_mode={config['extractor_mode']!r} (use 'default' or 'layer_norm')")
    if [(k, s) for _, k, s in conv_layers] != _CONV_KERNELS_AND_STRIDES:
        unsupported.append(f"conv kernels/strides {conv_layers} (every WavLM uses {_CONV_KERNELS_AND_STRIDES})")
    if conv_layers[-1][0] == config["encoder_embed_dim"]:
        unsupported.append("conv channels equal to encoder_embed_dim (a model without post_extract_proj)")
    if config["activation_fn"] != "gelu":
        unsupported.append(f"activation_fn={config['activation_fn']!r} (only 'gelu')")
    if not (config["relative_position_embedding"] and config["gru_rel_pos"]):
        unsupported.append("a model without gated relative position bias")
    if config["encoder_embed_dim"] % config["encoder_attention_heads"]:
        unsupported.append("encoder_embed_dim not divisible by encoder_attention_heads")
    if unsupported:
        raise CheckpointError(f"{path}: unsupported WavLM configuration: {'; '.join(unsupported)}")
    return config


def _parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """The cfg's ``conv_feature_layers`` expression, e.g. ``"[(512,10,5)] + [(512,3,2)] * 4"``, as a
    list of ``(channels, kernel, stride)``, evaluated without ``eval``: only int tuples, lists, + and *."""

    error = ValueError(f"conv_feature_layers {spec!r} is not a list of (channels, kernel, stride) tuples")

    def value(node: ast.AST) -> Any:
        match node:
            case ast.Constant(value=int() as number) if 0 < number <= 8192:
                return number
            case ast.Tuple(elts=items):
                return tuple(value(item) for item in items)
            case ast.List(elts=items):
                return [value(item) for item in items]
            case ast.BinOp(op=ast.Add()):
                left, right = value(node.left), value(node.right)
                if isinstance(left, list) and isinstance(right, list):
                    return left + right
            case ast.BinOp(op=ast.Mult()):
                left, right = value(node.left), value(node.right)
                if isinstance(left, list) and isinstance(right, int) and len(left) * right <= 64:
                    return left * right
        raise error

    try:
        layers = value(ast.parse(str(spec), mode="eval").body)
    except SyntaxError:
        raise error from None
    if not isinstance(layers, list) or not layers:
        raise error
    if not all(isinstance(layer, tuple) and len(layer) == 3 for layer in layers):
        raise error
    return layers


def build_torchaudio_wavlm(config: dict[str, Any]) -> torchaudio.models.Wav2Vec2Model:
    """torchaudio's WavLM for a (checked) network config; dropouts 0: this module only does inference."""
    return torchaudio.models.wavlm_model(
        extractor_mode="group_norm" if config["extractor_mode"] == "default" else "layer_norm",
        extractor_conv_layer_config=_parse_conv_layers(config["conv_feature_layers"]),
        extractor_conv_bias=config["conv_bias"],
        encoder_embed_dim=config["encoder_embed_dim"],
        encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=config["conv_pos"],
        encoder_pos_conv_groups=config["conv_pos_groups"],
        encoder_num_layers=config["encoder_layers"],
        encoder_num_heads=config["encoder_attention_heads"],
        encoder_num_buckets=config["num_buckets"],
        encoder_max_distance=config["max_distance"],
        encoder_attention_dropout=0.0,
        encoder_ff_interm_features=config["encoder_ffn_embed_dim"],
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_norm_first=config["layer_norm_first"],
        encoder_layer_drop=0.0,
        aux_num_out=None,
    )


# -- parameter names: Microsoft <-> torchaudio -----------------------------------------------------


def _microsoft_names(name: str, extractor_mode: str) -> tuple[str, ...]:
    """The Microsoft checkpoint key(s) holding torchaudio parameter ``name``.

    One key, except torchaudio's packed attention input projection ``in_proj_{weight,bias}``, which is
    the concatenation of Microsoft's ``q_proj``, ``k_proj``, ``v_proj`` (in that order).
    """
    layer = r"encoder\.transformer\.layers\.(\d+)\."
    conv_norm = "2.1" if extractor_mode == "layer_norm" else "2"  # LayerNorm in a block / GroupNorm
    renames = (
        (r"feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
        (r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", rf"feature_extractor.conv_layers.\1.{conv_norm}."),
        (r"encoder\.feature_projection\.layer_norm\.", "layer_norm."),
        (r"encoder\.feature_projection\.projection\.", "post_extract_proj."),
        (r"encoder\.transformer\.pos_conv_embed\.conv\.", "encoder.pos_conv.0."),
        (r"encoder\.transformer\.layer_norm\.", "encoder.layer_norm."),
        (layer + r"attention\.attention\.", r"encoder.layers.\1.self_attn."),  # out_proj, in_proj_*
        (layer + r"attention\.rel_attn_embed\.", r"encoder.layers.\1.self_attn.relative_attention_bias."),
        (layer + r"attention\.gru_rel_pos_linear\.", r"encoder.layers.\1.self_attn.grep_linear."),
        (layer + r"attention\.gru_rel_pos_const$", r"encoder.layers.\1.self_attn.grep_a"),
        (layer + r"layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
        (layer + r"final_layer_norm\.", r"encoder.layers.\1.final_layer_norm."),
        (layer + r"feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
        (layer + r"feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
    )
    for pattern, replacement in renames:
        renamed, found = re.subn("^" + pattern, replacement, name)
        if found:
            packed = re.fullmatch(r"(.*\.self_attn\.)in_proj_(weight|bias)", renamed)
            if packed:
                return tuple(f"{packed[1]}{qkv}_proj.{packed[2]}" for qkv in "qkv")
            return (renamed,)
    raise AssertionError(f"no Microsoft name for torchaudio parameter {name}")


def _to_torchaudio(
    state_dict: Any, model: nn.Module, config: dict[str, Any], path: str | os.PathLike
) -> dict[str, Tensor]:
    """Rename a Microsoft state dict to ``model``'s parameter names (float32), strictly."""
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: 'model' should be a state dict, got {type(state_dict).__name__}")
    state_dict = dict(state_dict)
    for legacy, parametrized in _LEGACY_WEIGHT_NORM.items():
        if legacy in state_dict:
            if parametrized in state_dict:
                raise CheckpointError(f"{path}: holds both {legacy} and {parametrized}; keep one")
            state_dict[parametrized] = state_dict.pop(legacy)

    names = {name: _microsoft_names(name, config["extractor_mode"]) for name in model.state_dict()}
    expected = {key for keys in names.values() for key in keys}
    missing = sorted(expected - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected - set(_TRAINING_ONLY_KEYS))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: the WavLM weights do not match the architecture in its cfg: "
            f"missing {missing or 'nothing'}, unexpected {unexpected or 'nothing'}"
        )

    def gather(keys: tuple[str, ...]) -> Tensor:  # no copy for single keys: Large is 1.2 GB
        return state_dict[keys[0]] if len(keys) == 1 else torch.cat([state_dict[key] for key in keys])

    return {name: gather(keys).float() for name, keys in names.items()}


def microsoft_state_dict(model: nn.Module, config: dict[str, Any]) -> dict[str, Tensor]:
    """``model``'s parameters under Microsoft's key names (the inverse of :func:`_to_torchaudio`)."""
    state_dict = {}
    for name, value in model.state_dict().items():
        keys = _microsoft_names(name, config["extractor_mode"])
        state_dict.update(zip(keys, (part.clone() for part in value.chunk(len(keys)))))
    return state_dict
