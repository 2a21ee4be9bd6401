"""WavTokenizer: a single-codebook speech codec, 24 kHz audio <-> 40 Hz (or 75 Hz) codes in [0, 4096).

ELLA-V predicts the codes of the 40 Hz model; :meth:`WavTokenizer.decode` turns them into speech:

    codes [B, L] -> codebook lookup [B, 512, L] -> Vocos backbone [B, L, 768] -> ISTFT head [B, 600 * L]

:meth:`WavTokenizer.encode` goes the other way (for copy-synthesis): resample to 24 kHz -> SEANet
encoder [1, 512, L] -> nearest codebook entry per frame -> codes [L].

The modules below are a compact re-implementation of the inference path of
github.com/nicolvisser/WavTokenizer. They read the released PyTorch Lightning checkpoints directly
(``{"state_dict": ...}``) and give the same numbers as the original code (see tests/test_wavtokenizer.py).
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints, registry
from .audio import as_waveform, resample
from .checkpoints import CheckpointError

SAMPLE_RATE = 24000


@dataclass(frozen=True)
class WavTokenizerConfig:
    """The sizes of one WavTokenizer. Only ``downsamples`` and ``n_fft`` differ between the releases."""

    downsamples: tuple[int, ...]  # SEANet strides as the original lists them (the encoder applies them reversed)
    n_fft: int  # ISTFT size of the head; its hop is the encoder's total stride
    n_filters: int = 32  # SEANet channels after the first conv, doubled by every downsampling
    dimension: int = 512  # encoder output = codebook vectors = backbone input
    num_codes: int = 4096
    dim: int = 768  # Vocos backbone width
    intermediate_dim: int = 2304  # ConvNeXt MLP width
    num_layers: int = 12  # ConvNeXt blocks (their layer scale is initialised to 1 / num_layers)
    adanorm_num_embeddings: int = 4  # AdaLayerNorm conditions; inference always uses id 0

    @property
    def hop_length(self) -> int:
        return math.prod(self.downsamples)


CONFIGS: dict[str, WavTokenizerConfig] = {
    "small_600_24k_4096": WavTokenizerConfig(downsamples=(6, 5, 5, 4), n_fft=2400),  # 40 Hz, used by ELLA-V
    "small_320_24k_4096": WavTokenizerConfig(downsamples=(8, 5, 4, 2), n_fft=1280),  # 75 Hz
}
"""The released models (``configs.py`` of the original repository)."""

# Key names in the official checkpoints. The SEANet decoder was trained with the codec but is never
# run at inference; the k-means/EMA state of the codebook is training-only.
_MODEL_PREFIXES = ("feature_extractor.", "backbone.", "head.")
_ENCODER_PREFIX = "feature_extractor.encodec.encoder.model."
_CODEBOOK_PREFIX = "feature_extractor.encodec.quantizer.vq.layers.0._codebook."
_UNUSED_PREFIX = "feature_extractor.encodec.decoder."
_UNUSED_KEYS = {_CODEBOOK_PREFIX + name for name in ("inited", "cluster_size", "embed_avg")}


# ---------------------------------------------------------------------------------------------
# SEANet encoder (EnCodec's, non-causal, weight-normalised, reflect padding)
# ---------------------------------------------------------------------------------------------


def _reflect_pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Reflect-pad the last dim; inputs shorter than the padding are zero-extended first (as EnCodec)."""
    shortfall = max(left, right) - x.shape[-1] + 1
    if shortfall <= 0:
        return F.pad(x, (left, right), mode="reflect")
    return F.pad(F.pad(x, (0, shortfall)), (left, right), mode="reflect")[..., :-shortfall]


class SEANetConv1d(nn.Module):
    """Weight-normalised Conv1d with "same" reflect padding: ``[B, C_in, T] -> [B, C_out, ceil(T / stride)]``.

    The weight is ``weight_g * weight_v / ||weight_v||`` (norm per output channel), stored as the
    two tensors of ``torch.nn.utils.weight_norm``. The input is padded by ``kernel - stride``
    (one more sample on the left when odd) plus enough on the right to fill the last stride.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        conv = nn.Conv1d(in_channels, out_channels, kernel_size)  # only for PyTorch's default init
        self.weight_v = nn.Parameter(conv.weight.detach())
        self.weight_g = nn.Parameter(conv.weight.detach().norm(dim=(1, 2), keepdim=True))
        self.bias = conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = self.kernel_size - self.stride
        right = padding // 2 + (-x.shape[-1]) % self.stride
        x = _reflect_pad(x, padding - padding // 2, right)
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(1, 2), keepdim=True))
        return F.conv1d(x, weight, self.bias, stride=self.stride)


class SEANetResidualUnit(nn.Module):
    """``x -> shortcut(x) + conv1x1(ELU(conv3(ELU(x))))``, the inner width halved; ``[B, C, T]``."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ELU(), SEANetConv1d(channels, channels // 2, 3), nn.ELU(), SEANetConv1d(channels // 2, channels, 1)
        )
        self.shortcut = SEANetConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


class SkipLSTM(nn.Module):
    """A 2-layer LSTM over time with a residual connection; ``[B, C, T] -> [B, C, T]``."""

    def __init__(self, channels: int, num_layers: int = 2):
        super().__init__()
        self.lstm = nn.LSTM(channels, channels, num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x.permute(2, 0, 1))
        return x + y.permute(1, 2, 0)


def seanet_encoder(n_filters: int, dimension: int, downsamples: tuple[int, ...]) -> nn.Sequential:
    """``[B, 1, N] -> [B, dimension, ceil(N / prod(downsamples))]``.

    Layer ``3 i + 3`` is the i-th downsampling conv (kernel 2 x stride), the LSTM comes after them.
    """
    layers: list[nn.Module] = [SEANetConv1d(1, n_filters, 7)]
    channels = n_filters
    for stride in reversed(downsamples):
        downsample = SEANetConv1d(channels, 2 * channels, kernel_size=2 * stride, stride=stride)
        layers += [SEANetResidualUnit(channels), nn.ELU(), downsample]
        channels *= 2
    layers += [SkipLSTM(channels), nn.ELU(), SEANetConv1d(channels, dimension, 7)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------
# Vocos backbone and ISTFT head
# ---------------------------------------------------------------------------------------------


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """``x + conv(swish(norm(conv(swish(norm(x))))))`` with GroupNorm and k=3 convs; ``[B, C, L]``."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1, self.conv1 = _group_norm(channels), nn.Conv1d(channels, channels, 3, padding=1)
        self.norm2, self.conv2 = _group_norm(channels), nn.Conv1d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))  # (dropout 0.1 in training only)


class AttentionBlock(nn.Module):
    """Single-head self-attention over all frames with 1x1-conv projections, residual; ``[B, C, L]``."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv1d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = (projection(h).transpose(1, 2).unsqueeze(1) for projection in (self.q, self.k, self.v))
        attended = F.scaled_dot_product_attention(q, k, v)  # [B, 1, L, C], scale C^-0.5
        return x + self.proj_out(attended.squeeze(1).transpose(1, 2))


class AdaLayerNorm(nn.Module):
    """LayerNorm (no affine) followed by a learned scale and shift chosen by a condition id.

    WavTokenizer's inference always passes id 0, so only row 0 of the embeddings is used.
    """

    def __init__(self, num_embeddings: int, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Embedding(num_embeddings, dim)
        self.shift = nn.Embedding(num_embeddings, dim)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., dim] -> [..., dim]``."""
        x = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        return x * self.scale.weight[0] + self.shift.weight[0]


class ConvNeXtBlock(nn.Module):
    """Depthwise conv (k=7) -> AdaLayerNorm -> Linear -> GELU -> Linear -> x gamma, residual; ``[B, C, L]``."""

    def __init__(self, dim: int, intermediate_dim: int, layer_scale: float, adanorm_num_embeddings: int):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = AdaLayerNorm(adanorm_num_embeddings, dim)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.dwconv(x).transpose(1, 2))
        h = self.gamma * self.pwconv2(F.gelu(self.pwconv1(h)))
        return x + h.transpose(1, 2)


class VocosBackbone(nn.Module):
    """Codebook features ``[B, dimension, L]`` -> hidden frames ``[B, L, dim]``."""

    def __init__(self, config: WavTokenizerConfig):
        super().__init__()
        dim = config.dim
        self.embed = nn.Conv1d(config.dimension, dim, kernel_size=7, padding=3)
        self.pos_net = nn.Sequential(
            ResnetBlock(dim), ResnetBlock(dim), AttentionBlock(dim), ResnetBlock(dim), ResnetBlock(dim),
            _group_norm(dim),
        )  # fmt: skip
        self.norm = AdaLayerNorm(config.adanorm_num_embeddings, dim)
        self.convnext = nn.ModuleList(
            ConvNeXtBlock(dim, config.intermediate_dim, 1 / config.num_layers, config.adanorm_num_embeddings)
            for _ in range(config.num_layers)
        )
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.pos_net(self.embed(features))
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        for block in self.convnext:
            x = block(x)
        return self.final_layer_norm(x.transpose(1, 2))


class InverseSTFT(nn.Module):
    """Inverse STFT with "same" padding: ``[B, n_fft // 2 + 1, L]`` complex -> ``[B, hop_length * L]``.

    Each frame is ``irfft`` x Hann window; frames are overlap-added ``hop_length`` apart, ``(n_fft -
    hop_length) / 2`` samples are trimmed from both ends and the sum of squared windows divided out.
    (``torch.istft`` only supports centred frames.)
    """

    def __init__(self, n_fft: int, hop_length: int):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft))

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, n_fft, L] -> [B, (L - 1) * hop_length + n_fft]``."""
        length = (frames.shape[-1] - 1) * self.hop_length + self.n_fft
        summed = F.fold(frames, output_size=(1, length), kernel_size=(1, self.n_fft), stride=(1, self.hop_length))
        return summed[:, 0, 0]

    def forward(self, spectrum: torch.Tensor) -> torch.Tensor:
        num_frames = spectrum.shape[-1]
        frames = torch.fft.irfft(spectrum, n=self.n_fft, dim=1) * self.window[:, None]
        signal = self._overlap_add(frames)
        envelope = self._overlap_add(self.window.square()[None, :, None].expand(1, -1, num_frames))
        trim = (self.n_fft - self.hop_length) // 2
        return (signal / envelope)[:, trim : trim + num_frames * self.hop_length]


class ISTFTHead(nn.Module):
    """Hidden frames ``[B, L, dim]`` -> log-magnitude and phase per bin -> waveform ``[B, hop_length * L]``."""

    def __init__(self, dim: int, n_fft: int, hop_length: int):
        super().__init__()
        self.out = nn.Linear(dim, n_fft + 2)
        self.istft = InverseSTFT(n_fft, hop_length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_magnitude, phase = self.out(x).transpose(1, 2).chunk(2, dim=1)
        magnitude = log_magnitude.exp().clamp(max=100.0)  # the original's guard against huge magnitudes
        return self.istft(torch.polar(magnitude, phase))


# ---------------------------------------------------------------------------------------------
# The codec
# ---------------------------------------------------------------------------------------------


class WavTokenizer(nn.Module):
    """WavTokenizer codec: ``decode(codes [B, L]) -> [B, hop_length * L]`` and ``encode(wav, sr) -> codes [L]``.

    Build it with :meth:`from_pretrained` (the released checkpoints) or :meth:`from_checkpoint`.
    Attributes: ``sample_rate`` (24000), ``hop_length`` (600 or 320 samples per code), ``frame_rate``
    (40 or 75 codes per second), ``num_codes`` (4096), ``random_weights``.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, config: WavTokenizerConfig, name: str = "custom"):
        super().__init__()
        self.config, self.name = config, name
        self.hop_length = config.hop_length
        self.frame_rate = SAMPLE_RATE // config.hop_length
        self.num_codes = config.num_codes
        self.random_weights = False
        self.encoder = seanet_encoder(config.n_filters, config.dimension, config.downsamples)
        self.register_buffer("codebook", torch.zeros(config.num_codes, config.dimension))
        self.backbone = VocosBackbone(config)
        self.head = ISTFTHead(config.dim, config.n_fft, config.hop_length)

    @property
    def device(self) -> torch.device:
        return self.codebook.device

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        config: str = "small_600_24k_4096",
        device: str | torch.device | None = None,
    ) -> WavTokenizer:
        """Load an official Lightning checkpoint ``{"state_dict": ...}``.

        Every size is read from the weights; ``config`` names the release the file should be and is
        checked against them (its strides and ``n_fft``). Keys outside ``feature_extractor.``,
        ``backbone.``, ``head.`` (discriminators, losses), the unused SEANet decoder and the
        codebook's training statistics are ignored; every other key must be a parameter of this model.
        """
        if config not in CONFIGS:
            raise ValueError(f"unknown WavTokenizer config {config!r}; choose from {sorted(CONFIGS)}")
        ckpt = checkpoints.load_checkpoint(path)
        checkpoints.require_keys(ckpt, ("state_dict",), path, "WavTokenizer (Lightning)")
        state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith(_MODEL_PREFIXES)}
        model_config = _config_from_state_dict(state, CONFIGS[config], path)

        model = cls(model_config, name=config)
        names = _checkpoint_names(model)
        used = set(names.values())
        missing = sorted(used - state.keys())
        unused = {k for k in state if k in _UNUSED_KEYS or k.startswith(_UNUSED_PREFIX)}
        unexpected = sorted(state.keys() - used - unused)
        if missing or unexpected:
            raise CheckpointError(
                f"{path} does not match the WavTokenizer architecture: missing keys {_some(missing)}, "
                f"unexpected keys {_some(unexpected)}"
            )
        inited = state.get(_CODEBOOK_PREFIX + "inited")
        if inited is not None and not inited.any():
            raise CheckpointError(f"{path} holds an untrained codebook (inited = 0): it was never fitted to data")
        shapes = {local: tensor.shape for local, tensor in model.state_dict().items()}
        wrong = [
            f"{official} {list(state[official].shape)} (expected {list(shapes[local])})"
            for local, official in names.items()
            if state[official].shape != shapes[local]
        ]
        if wrong:
            raise CheckpointError(f"{path} has tensors of inconsistent shapes: {_some(wrong)}")
        model.load_state_dict({local: state[official] for local, official in names.items()})
        return model.to(device or "cpu").eval().requires_grad_(False)

    @classmethod
    def from_pretrained(
        cls, name: str = "small_600_24k_4096", device: str | torch.device | None = None
    ) -> WavTokenizer:
        """The released ``small_600_24k_4096`` (40 Hz, ELLA-V's codec) or ``small_320_24k_4096`` (75 Hz)."""
        load = functools.partial(cls.from_checkpoint, config=name, device=device)
        return checkpoints.load_pretrained(load, registry.wavtokenizer_file(name), "wavtokenizer", name=name)

    # -- codes -> audio --------------------------------------------------------------------------

    def codes_to_features(self, codes: torch.Tensor | list) -> torch.Tensor:
        """Codebook vectors of ``codes`` (``[L]`` or ``[B, L]``, tensor or list): ``[B, dimension, L]``."""
        return F.embedding(self._check_codes(codes), self.codebook).transpose(1, 2)

    @torch.inference_mode()
    def decode_features(self, features: torch.Tensor) -> torch.Tensor:
        """Backbone + ISTFT head: ``[B, dimension, L] -> [B, hop_length * L]`` at 24 kHz."""
        if features.dim() != 3 or features.shape[1] != self.config.dimension or features.shape[2] == 0:
            raise ValueError(f"expected features [B, {self.config.dimension}, L>0], got {list(features.shape)}")
        return self.head(self.backbone(features.to(self.device)))

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor | list) -> torch.Tensor:
        """Synthesize speech from codes ``[L]`` or ``[B, L]`` (tensor or list of ints).

        Returns ``FloatTensor[B, hop_length * L]`` at :attr:`sample_rate` on the model's device.
        """
        return self.decode_features(self.codes_to_features(codes))

    def _check_codes(self, codes: torch.Tensor | list) -> torch.Tensor:
        """``codes`` as a LongTensor ``[B, L]`` on the model's device, or a clear error."""
        if not isinstance(codes, torch.Tensor):
            try:
                codes = torch.as_tensor(codes)
            except (TypeError, ValueError, RuntimeError) as e:
                raise ValueError(f"codes must be a tensor or a (rectangular) list of ints: {e}") from e
        if codes.dim() == 1:
            codes = codes.unsqueeze(0)
        if codes.dim() != 2:
            raise ValueError(f"codes must have shape [L] or [B, L], got {list(codes.shape)}")
        if codes.numel() == 0:
            raise ValueError(f"the code sequence is empty (shape {list(codes.shape)}); give at least one code")
        if codes.dtype == torch.bool or codes.is_floating_point() or codes.is_complex():
            raise TypeError(f"codes must be integers, got dtype {codes.dtype}")
        low, high = codes.min().item(), codes.max().item()
        if low < 0 or high >= self.num_codes:
            bad = low if low < 0 else high
            raise ValueError(f"codes must lie in [0, {self.num_codes}), found {bad}")
        return codes.to(self.device, torch.long)

    # -- audio -> codes --------------------------------------------------------------------------

    def quantize(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook vector (squared Euclidean) per frame: ``[B, dimension, T] -> [B, T]``."""
        x = embeddings.transpose(1, 2)
        distances = x.square().sum(-1, keepdim=True) - 2 * x @ self.codebook.T + self.codebook.square().sum(-1)
        return distances.argmin(dim=-1)

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
        """Codes ``LongTensor[ceil(N_24k / hop_length)]`` of a mono waveform ``[samples]`` or ``[1, samples]``.

        The audio is resampled to 24 kHz first (no loudness normalisation, as the original).
        """
        wav = as_waveform(wav)
        if wav.shape[0] != 1:
            raise ValueError(
                f"expected mono audio [samples] or [1, samples], got {wav.shape[0]} channels; "
                "average them first with dpslm_utils.to_mono(wav)"
            )
        wav = resample(wav, sample_rate, SAMPLE_RATE).to(self.device)
        return self.quantize(self.encoder(wav.unsqueeze(1)))[0]

    def __repr__(self) -> str:
        return checkpoints.describe(self, name=self.name, num_codes=self.num_codes, frame_rate=f"{self.frame_rate}Hz",
                                    hop_length=self.hop_length, dim=self.config.dim, n_layers=self.config.num_layers,
                                    device=self.device)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The official checkpoint layout
# ---------------------------------------------------------------------------------------------


def _some(keys: list[str], limit: int = 5) -> str:
    """At most ``limit`` keys, then how many more."""
    return str(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _checkpoint_names(model: WavTokenizer) -> dict[str, str]:
    """This model's state-dict keys -> their names in the official checkpoint.

    Backbone and head keep their names. The encoder lives at ``feature_extractor.encodec.encoder.model.``
    and each weight-normalised conv is nested two levels deeper (``<layer>.conv.conv.weight_g``).
    """
    names = {}
    for key in model.state_dict():
        module_name, _, tensor_name = key.rpartition(".")
        if key == "codebook":
            names[key] = _CODEBOOK_PREFIX + "embed"
        elif module_name.startswith("encoder."):
            nested = ".conv.conv" if isinstance(model.get_submodule(module_name), SEANetConv1d) else ""
            names[key] = f"{_ENCODER_PREFIX}{module_name.removeprefix('encoder.')}{nested}.{tensor_name}"
        else:
            names[key] = key
    return names


def _config_from_state_dict(
    state: dict, expected: WavTokenizerConfig, path: str | os.PathLike
) -> WavTokenizerConfig:
    """Read every size from the tensor shapes; check strides and n_fft against the named release."""

    def shape(key: str) -> torch.Size:
        if key not in state:
            raise CheckpointError(f"{path} is not a WavTokenizer checkpoint: it lacks {key!r}")
        return state[key].shape

    stages = range(len(expected.downsamples))
    kernels = [shape(f"{_ENCODER_PREFIX}{3 * i + 3}.conv.conv.weight_v")[-1] for i in stages]
    num_codes, dimension = shape(_CODEBOOK_PREFIX + "embed")
    dim, _, _ = shape("backbone.embed.weight")
    layers = {int(m.group(1)) for k in state if (m := re.fullmatch(r"backbone\.convnext\.(\d+)\.gamma", k))}
    config = WavTokenizerConfig(
        downsamples=tuple(kernel // 2 for kernel in reversed(kernels)),
        n_fft=shape("head.out.weight")[0] - 2,
        n_filters=shape(_ENCODER_PREFIX + "0.conv.conv.weight_v")[0],
        dimension=dimension,
        num_codes=num_codes,
        dim=dim,
        intermediate_dim=shape("backbone.convnext.0.pwconv1.weight")[0],
        num_layers=len(layers),
        adanorm_num_embeddings=shape("backbone.norm.scale.weight")[0],
    )
    found = (config.downsamples, config.n_fft)
    if found != (expected.downsamples, expected.n_fft):
        matching = [name for name, c in CONFIGS.items() if (c.downsamples, c.n_fft) == found]
        raise CheckpointError(
            f"{path} has strides {list(config.downsamples)} and n_fft {config.n_fft}, but the requested config "
            f"expects strides {list(expected.downsamples)} and n_fft {expected.n_fft}"
            + (f"; it is a {matching[0]} checkpoint: pass config={matching[0]!r}" if matching else "")
        )
    return config


def lightning_state_dict(model: WavTokenizer) -> dict[str, torch.Tensor]:
    """``model``'s weights as an official checkpoint's ``"state_dict"`` (the inverse of loading).

    The codebook's training statistics are written as a fitted codebook's (``inited`` = 1); the SEANet
    decoder, never run at inference, is left out.
    """
    names = _checkpoint_names(model)
    state = {names[key]: tensor for key, tensor in model.state_dict().items()}
    state[_CODEBOOK_PREFIX + "inited"] = torch.ones(1)
    state[_CODEBOOK_PREFIX + "cluster_size"] = torch.ones(model.num_codes)
    state[_CODEBOOK_PREFIX + "embed_avg"] = model.codebook  # same storage: costs nothing in the file
    return state
