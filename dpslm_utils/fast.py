"""Reduced-precision CPU inference, the ``fast=True`` switch of the loaders: int8 or bfloat16 weights.

Two kinds of work, two formats (figures and agreement with float32: ``benchmarks/README.md``):

* Generating with the unit LM or ELLA-V feeds a few tokens per step through ~200M weights, so a CPU
  spends its time *reading* them (0.8 GB per step in float32). ``"int8"`` stores every ``nn.Linear``
  weight as int8 with one scale per output row (``max|w_row| / 127``) and quantizes the activations
  on the fly (dynamic quantization, int32 accumulation, float32 out): a quarter of the bytes. Decoding
  steps (a few rows) run FBGEMM's kernel; prompts and scoring (:data:`MANY_ROWS` rows or more) run
  oneDNN's, which uses AMX where the CPU has it, so a prefill runs about 4x faster than in float32
  rather than 2x. Each layer holds its int8 weights three times (the two kernels' layouts and a plain
  copy): about 590 MiB for a released LM, against 770 MiB of float32 weights. The products are compiled
  with TorchScript (:class:`Int8Kernel`), which saves about 15 µs of Python overhead per call. The
  decoder's stacked projections (``wqkv``, ``w13``) become one int8 product each. Generation makes a
  bfloat16 KV cache (:func:`kv_cache_dtype`): attention reads half the bytes, and agreement with float32
  is unchanged (your own loop chooses: ``prefill(..., cache_dtype=torch.float32)``). Weight-only int8 and
  int4 kernels were slower or less accurate on this path.
* WavLM runs hundreds of frames through each weight, so it is bound by arithmetic. ``"bfloat16"``
  runs the network in bfloat16 (WavLM's positional convolution stays float32), which CPUs with
  AVX512-BF16 or AMX multiply several times faster than float32.

``fast=True`` picks per model: ``"int8"`` for the language models, ``"bfloat16"`` for WavLM where
the CPU has native bfloat16 (``"int8"`` otherwise). On a GPU it means ``"bfloat16"``.

A converted model stays an ordinary module. Its ``state_dict`` has the official keys and float weights
(int8 ones dequantized to float32, bfloat16 ones as they are), so ``ulm.official_checkpoint`` and
``ellav.official_checkpoint`` write files that ``from_checkpoint`` loads back; ``fast="int8"`` on such a
file gives the same int8 model again. It pickles whole (``torch.save(model)``, ``copy.deepcopy``); the
int8 layers pack their weights again when unpickled.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

FORMATS = ("int8", "bfloat16")

REDUCE_RANGE = True
"""Quantize activations to 7 bits, as PyTorch does by default on x86: the AVX2 int8 kernels add
pairs of 8-bit products in 16 bits, which 8-bit activations could overflow."""


def cpu_has_bfloat16() -> bool:
    """True when this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX) and PyTorch can use it."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def choose_format(fast: bool | str, device: torch.device | str | None, weight_bound: bool) -> str | None:
    """The reduced-precision format for ``fast`` on ``device``: None (float32), ``"int8"`` or ``"bfloat16"``.

    ``fast=True`` chooses: int8 for ``weight_bound`` models (decoding) and bfloat16 for the others
    where the CPU has it; a format name forces that format. int8 exists on the CPU only.
    """
    if fast is False or fast is None:
        return None
    if fast is not True and fast not in FORMATS:
        raise ValueError(f"fast must be True, False or one of {list(FORMATS)}, got {fast!r}")
    on_cpu = torch.device(device or "cpu").type == "cpu"
    if fast == "int8" and not on_cpu:
        raise ValueError(f"fast='int8' runs on the CPU only; on {device} use fast=True (bfloat16)")
    if fast is not True:
        return fast
    if not on_cpu:
        return "bfloat16"
    int8_available = any(engine in torch.backends.quantized.supported_engines for engine in ("x86", "fbgemm"))
    if weight_bound:
        return "int8" if int8_available else "bfloat16"
    return "bfloat16" if cpu_has_bfloat16() or not int8_available else "int8"


KV_CACHE_DTYPE = torch.bfloat16
"""The KV cache of int8 decoders when they generate (:func:`kv_cache_dtype`): half the bytes of float32
to read per step."""


def kv_cache_dtype(precision: str | None) -> torch.dtype | None:
    """The KV cache dtype to generate with a decoder in ``precision`` (what :func:`make_fast` returned):
    :data:`KV_CACHE_DTYPE` for int8, None (the weights' dtype) otherwise."""
    return KV_CACHE_DTYPE if precision == "int8" else None


MANY_ROWS = 32
"""From this many input rows on (prefill, scoring), :class:`Int8Linear` runs oneDNN's int8 kernel, which
uses AMX where the CPU has it; below (decoding), FBGEMM's, which is faster for a few rows."""


@contextlib.contextmanager
def quantized_engine(engine: str):
    """Pack quantized weights for ``engine`` inside the block (the packed weights remember their kernel)."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def int8_values(quantized: torch.Tensor) -> torch.Tensor:
    """The int8 values of a ``torch.qint8`` tensor, in its own memory (``int_repr()`` copies them)."""
    values = torch.empty(0, dtype=torch.int8)
    return values.set_(quantized.untyped_storage(), quantized.storage_offset(), quantized.shape, quantized.stride())


class Int8Kernel(nn.Module):
    """The product of :class:`Int8Linear`, compiled with TorchScript: called from Python, the int8 kernel
    converts its packed-weights argument on every call (about 23 µs per call instead of 8 µs compiled,
    and a decoding step makes 49 calls)."""

    def __init__(self, packed, packed_for_many_rows, many_rows_numel: int):
        super().__init__()
        self.packed, self.packed_for_many_rows = packed, packed_for_many_rows
        self.many_rows_numel, self.reduce_range = many_rows_numel, REDUCE_RANGE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.packed_for_many_rows if x.numel() >= self.many_rows_numel else self.packed
        return torch.ops.quantized.linear_dynamic(x, packed, self.reduce_range)


class Int8Linear(nn.Module):
    """An ``nn.Linear`` with int8 weights (one scale per output row) and dynamically quantized inputs.

    ``[..., in_features]`` float32 -> ``[..., out_features]`` float32. CPU only; inference only. The
    weights are packed twice, for the kernel of few rows and for that of many (:data:`MANY_ROWS`);
    both compute the same int32 sums from the same quantized input. ``weight`` (int8 ``[out, in]``) is
    the plain copy that the second pack keeps anyway: three copies of the int8 weights in memory in all.

    Its ``forward`` is the compiled :class:`Int8Kernel`'s own, so no Python frame stands between the
    caller and the kernel (about 2 µs a call). It stands in for the ``nn.Linear`` it was made from: its
    state dict is that layer's, with the dequantized weights (``weight · scale[:, None]``, float32), and
    loading one quantizes it again. It pickles (``torch.save(model)``, ``copy.deepcopy``) as its int8
    weights and scales, and packs them again when unpickled.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)
        self.register_buffer("scale", None)
        self._quantize(linear.weight.detach(), None if linear.bias is None else linear.bias.detach())

    def _quantize(self, weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor | None = None) -> None:
        """Hold ``weight [out, in]`` in int8, one scale per row (``max|w_row| / 127`` unless given), and pack it."""
        weight = weight.detach().float().cpu()
        if scale is None:
            scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127
        zero_points = torch.zeros(self.out_features, dtype=torch.long)
        int8_weight = torch.quantize_per_channel(weight, scale.double(), zero_points, 0, torch.qint8)
        bias = None if bias is None else bias.detach().float().cpu()
        self.packed = torch.ops.quantized.linear_prepack(int8_weight, bias)  # the kernel's own layout
        self.packed_for_many_rows = self.packed
        if "onednn" in torch.backends.quantized.supported_engines:
            with quantized_engine("onednn"):
                self.packed_for_many_rows = torch.ops.quantized.linear_prepack(int8_weight, bias)
        # the same weights, for inspection (and parameter counts): w ≈ weight · scale[:, None]
        self.weight = nn.Parameter(int8_values(int8_weight), requires_grad=False)
        self.scale = scale
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        kernel = Int8Kernel(self.packed, self.packed_for_many_rows, MANY_ROWS * self.in_features)
        self.__dict__["forward"] = torch.jit.script(kernel).forward  # not a submodule: pickled as the weights

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        destination[prefix + "weight"] = self.weight.float() * self.scale[:, None]
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        """Check the entries as ``nn.Linear`` does (same messages), then quantize them."""
        linear = nn.utils.skip_init(nn.Linear, self.in_features, self.out_features, bias=self.bias is not None)
        problems = len(missing_keys) + len(errors)
        linear._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)
        if len(missing_keys) + len(errors) == problems:
            self._quantize(linear.weight, linear.bias)

    def __getstate__(self) -> dict:
        packed = ("packed", "packed_for_many_rows", "forward")  # packed again by __setstate__
        return {name: value for name, value in self.__dict__.items() if name not in packed}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._quantize(self.weight.float() * self.scale[:, None], self.bias, self.scale)  # the same int8 values

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_linears(module: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` inside ``module`` (float32, on the CPU) by an :class:`Int8Linear`, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear(child))
        else:
            quantize_linears(child)
    return module


def make_fast(model: nn.Module, fast: bool | str, weight_bound: bool, keep_float32: tuple[str, ...] = ()) -> str | None:
    """Convert a loaded float32 ``model`` in place to the format :func:`choose_format` picks; return it.

    int8 replaces the ``nn.Linear`` layers (only the float32 weights that they hold are quantized; the
    decoder's stacked projections, ``wqkv`` and ``w13``, become one int8 product each);
    bfloat16 casts every parameter and buffer except those of the submodules named in ``keep_float32``
    (the caller casts their inputs back to float32).
    """
    parameter = next(model.parameters())
    precision = choose_format(fast, parameter.device, weight_bound)
    if precision is not None and parameter.dtype != torch.float32:
        raise ValueError(
            f"fast={fast!r} converts float32 weights; this model holds {parameter.dtype} (leave dtype unset)"
        )
    if precision == "int8":
        quantize_linears(model)
    elif precision == "bfloat16":
        model.to(torch.bfloat16)
        for name in keep_float32:
            model.get_submodule(name).float()
    return precision
