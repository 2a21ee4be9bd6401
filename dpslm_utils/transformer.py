"""The Mistral-style decoder under both language models: model, KV cache and sampling in one file.

The unit LM (Mistral-ULM) and ELLA-V are the same network: token embedding -> ``n_layers`` pre-norm
blocks (RMSNorm -> grouped-query attention with rotary positions, RMSNorm -> SwiGLU) -> RMSNorm ->
output projection (ELLA-V's has a bias). The projections that read the same input are held stacked
(``wqkv`` = wq | wk | wv, ``w13`` = w1 | w3, as in gpt-fast), but the state dict has the checkpoints'
keys both ways, so both official formats load with a plain ``load_state_dict(strict=True)`` and
``state_dict()`` writes them.

Conventions that must match the released weights:

* RMSNorm ``x · rsqrt(mean(x²) + eps) · w`` computed in float32.
* RoPE on consecutive pairs ``(x[2i], x[2i+1])`` (the original Llama/Mistral "complex" convention,
  not the half-split one), frequencies ``θ^(-2i/head_dim)``. Angles are computed from the positions
  on the fly, so there is no 8000-position limit as in the original.
* Grouped-query attention: query head ``h`` reads kv head ``h // (n_heads / n_kv_heads)``.
* Logits are returned as float32, whatever the weights' dtype.

Batches of sequences of different lengths are right-padded. Every row has its own positions: row
``b`` of a forward pass holds the tokens at positions ``start[b], start[b] + 1, ...``. With a
:class:`KVCache` a query at position ``p`` attends to the cached keys at positions ``0..p`` of its
row, so right-padding never leaks: padded tokens sit at positions no real query can see, and a real
token later overwrites them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_seed

try:  # used on CUDA when installed (pip install xformers); PyTorch's SDPA otherwise
    from xformers.ops import LowerTriangularMask, memory_efficient_attention
except ImportError:
    memory_efficient_attention = None

RELEASED_DIMS = dict(dim=1024, n_layers=12, head_dim=64, hidden_dim=4096, n_heads=16, n_kv_heads=16,
                     norm_eps=1e-6, rope_theta=10000.0)  # fmt: skip
"""Size of every released unit LM and ELLA-V model (vocab_size: k + 1 for the unit LM, 4 + k + 4096 for ELLA-V)."""


@dataclass(frozen=True)
class ModelArgs:
    """The checkpoints' ``model_args``. ``dropout`` (unit LM) and ``max_batch_size`` (ELLA-V) are ignored."""

    dim: int
    n_layers: int
    head_dim: int
    hidden_dim: int
    n_heads: int
    n_kv_heads: int
    norm_eps: float
    vocab_size: int
    rope_theta: float

    IGNORED_KEYS = ("dropout", "max_batch_size")

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads or self.head_dim % 2:
            raise ValueError(f"n_heads must be a multiple of n_kv_heads and head_dim even: {self}")

    @classmethod
    def from_dict(cls, args: dict) -> ModelArgs:
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(args))
        unknown = sorted(set(args) - names - set(cls.IGNORED_KEYS))
        if missing or unknown:
            raise ValueError(f"model_args: missing keys {missing}, unknown keys {unknown}")
        return cls(**{name: args[name] for name in names})

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Pre-allocated keys and values, ``[batch, n_kv_heads, max_seq_len, head_dim]`` per layer."""

    def __init__(self, args: ModelArgs, batch_size: int, max_seq_len: int, device: torch.device, dtype: torch.dtype):
        shape = (args.n_layers, batch_size, args.n_kv_heads, max_seq_len, args.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.max_seq_len = max_seq_len
        self.rows = torch.arange(batch_size, device=device)[:, None]

    def update(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: int):
        """Write ``k, v [B, T, Hkv, D]`` at ``positions [B, T]``; return the first ``kv_len`` cached positions
        ``[B, Hkv, kv_len, D]``."""
        self.keys[layer][self.rows, :, positions] = k.to(self.keys.dtype)
        self.values[layer][self.rows, :, positions] = v.to(self.values.dtype)
        return self.keys[layer][:, :, :kv_len], self.values[layer][:, :, :kv_len]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rotary_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles ``position · θ^(-2i/head_dim)``, laid out for :func:`apply_rotary`.

    ``[B, T, 1, head_dim]`` float32 each: pair i holds ``(cos, cos)`` and ``(-sin, sin)`` of its angle.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    angles = positions.float()[..., None, None] * inv_freq
    sin = angles.sin()
    return angles.cos().repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each consecutive pair ``(x[2i], x[2i+1])`` of ``x [B, T, H, D]`` as a complex number:
    ``(x[2i] cos - x[2i+1] sin, x[2i+1] cos + x[2i] sin)``, in float32."""
    x32 = x.float()
    swapped = x32.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x[2i+1], x[2i]) in each pair
    return (x32 * cos + swapped * sin).type_as(x)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``softmax(q kᵀ / √D + mask) v``: q ``[B, H, T, D]``, k and v ``[B, Hkv, S, D]``.

    ``mask`` is boolean ``[B, 1, T, S]`` (True = may attend), or None for plain causal attention (T = S).
    """
    if memory_efficient_attention is not None and q.is_cuda:
        return _xformers_attention(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)


def _xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The same with xformers' memory-efficient kernel (CUDA tensors, when xformers is installed)."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if mask is None:
        bias = LowerTriangularMask()
    else:  # xformers wants an additive bias whose rows start at multiples of 8 elements
        (batch, heads, queries, _), keys = q.shape, k.shape[2]
        bias = q.new_full((batch, heads, queries, math.ceil(keys / 8) * 8), float("-inf"))[..., :keys]
        bias.masked_fill_(mask, 0.0)
    out = memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
    return out.transpose(1, 2)


class StackedLinear(nn.Linear):
    """Bias-free linear layers that read the same input, held as one: ``weight`` stacks their rows.

    ``[..., in_features] -> [..., out_features]``: the layers' outputs side by side. ``parts`` maps
    each layer's name to its number of rows, in order. Each layer's rows are multiplied on their own,
    so every output is rounded as that layer's alone (the originals'), float32 or bfloat16; a Linear
    swap such as :class:`dpslm_utils.fast.Int8Linear` multiplies the whole stack in one product.
    Built from the layers themselves, so a fresh model draws its initial weights as the originals do.
    """

    def __init__(self, **layers: nn.Linear):
        if any(layer.bias is not None for layer in layers.values()):
            raise ValueError(f"StackedLinear stacks bias-free layers; {list(layers)} include one with a bias")
        parts = {name: layer.out_features for name, layer in layers.items()}
        with torch.device("meta"):  # no initialisation: the layers' weights are taken next
            super().__init__(next(iter(layers.values())).in_features, sum(parts.values()), bias=False)
        self.weight = nn.Parameter(torch.cat([layer.weight.detach() for layer in layers.values()]))
        self.parts = parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.linear(x, rows) for rows in self.weight.split(list(self.parts.values()))], dim=-1)


def keep_original_names(module: nn.Module, order: tuple[str, ...]) -> None:
    """Make ``module``'s state dict that of the originals: each :class:`StackedLinear` child is saved as
    its layers (``wqkv.weight`` -> ``wq.weight``, ``wk.weight``, ``wv.weight``, copies), all of the
    module's entries in the originals' layer ``order``, and loaded from them (concatenated)."""
    stacks = {name: child.parts for name, child in module.named_children() if isinstance(child, StackedLinear)}
    module.register_state_dict_post_hook(functools.partial(_save_layers, stacks=stacks, order=order))
    module.register_load_state_dict_pre_hook(functools.partial(_load_layers, stacks=stacks))


def _save_layers(module, state_dict, prefix, local_metadata, stacks: dict, order: tuple[str, ...]) -> None:
    own = {key[len(prefix) :]: state_dict.pop(key) for key in [key for key in state_dict if key.startswith(prefix)]}
    for stack, parts in stacks.items():
        weights = own.pop(f"{stack}.weight").split(list(parts.values()))
        own |= {f"{name}.weight": weight.clone() for name, weight in zip(parts, weights)}
    for key in sorted(own, key=lambda key: order.index(key.split(".")[0])):
        state_dict[prefix + key] = own[key]


def _load_layers(module, state_dict, prefix, *_, stacks: dict) -> None:
    for stack, parts in stacks.items():
        keys = [f"{prefix}{name}.weight" for name in parts]
        if all(key in state_dict for key in keys):
            state_dict[f"{prefix}{stack}.weight"] = torch.cat([state_dict.pop(key) for key in keys])


class Attention(nn.Module):
    """Grouped-query attention. ``wqkv`` stacks the originals' ``wq``, ``wk``, ``wv`` (x -> [q | k | v]);
    the state dict holds the three (:func:`keep_original_names`)."""

    def __init__(self, args: ModelArgs, dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wqkv = StackedLinear(wq=nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False),
                                  wk=nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False),
                                  wv=nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False))  # fmt: skip
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        keep_original_names(self, order=("wq", "wk", "wv", "wo"))

    def forward(self, x, cos, sin, positions, mask, cache: KVCache | None, layer: int, kv_len: int) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = self.rotated_projections(x, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, positions, k, v, kv_len)
        else:
            k, v = k.transpose(1, 2), v.transpose(1, 2)
        out = attention(q.transpose(1, 2).to(k.dtype), k, v, mask).to(x.dtype)
        return self.dropout(self.wo(out.transpose(1, 2).reshape(batch, length, -1)))

    def rotated_projections(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q ``[B, T, n_heads, D]`` and k ``[B, T, n_kv_heads, D]`` rotated to their positions, v like k."""
        q_and_k, v = self.wqkv(x).unflatten(-1, (-1, self.head_dim)).split(
            (self.n_heads + self.n_kv_heads, self.n_kv_heads), dim=2
        )
        q, k = apply_rotary(q_and_k, cos, sin).split((self.n_heads, self.n_kv_heads), dim=2)  # one call for both
        return q, k, v


class FeedForward(nn.Module):
    """SwiGLU. ``w13`` stacks the originals' ``w1`` and ``w3`` (x -> [gate | up]); the state dict holds
    ``w1``, ``w2``, ``w3`` (:func:`keep_original_names`)."""

    def __init__(self, args: ModelArgs, dropout: float = 0.0):
        super().__init__()
        w1 = nn.Linear(args.dim, args.hidden_dim, bias=False)  # made in the originals' order: w1, w2, w3
        self.w2 = nn.Linear(args.hidden_dim, args.dim, bias=False)
        self.w13 = StackedLinear(w1=w1, w3=nn.Linear(args.dim, args.hidden_dim, bias=False))
        self.dropout = nn.Dropout(dropout)
        keep_original_names(self, order=("w1", "w2", "w3"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.dropout(self.w2(F.silu(gate) * up))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, dropout: float = 0.0):
        super().__init__()
        self.attention = Attention(args, dropout)
        self.feed_forward = FeedForward(args, dropout)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, cos, sin, positions, mask, cache, layer, kv_len) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, positions, mask, cache, layer, kv_len)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """The decoder. ``dropout`` (training only: after the attention output projection and after the
    feed-forward, as Mistral-ULM) is inactive in eval mode and adds no parameters."""

    def __init__(self, args: ModelArgs, output_bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args, dropout) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=output_bias)

    @property
    def device(self) -> torch.device:
        return self.tok_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_embeddings.weight.dtype

    def new_cache(self, batch_size: int, max_seq_len: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty :class:`KVCache` in ``dtype`` (None: the weights' dtype)."""
        return KVCache(self.args, batch_size, max_seq_len, self.device, dtype or self.dtype)

    def forward(
        self, tokens: torch.Tensor, start: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Logits ``[B, T, vocab_size]`` (float32) for ``tokens [B, T]``.

        Without a cache, every row is a sequence starting at position 0 (causal attention). With a
        cache, row ``b`` continues its sequence at position ``start[b]`` (LongTensor ``[B]``): its
        keys and values are written there and it attends to everything cached before.
        """
        batch, length = tokens.shape
        if cache is None:
            if start is not None:
                raise ValueError("start positions need a KVCache")
            positions, mask, kv_len = torch.arange(length, device=tokens.device).expand(batch, length), None, length
        else:
            if start is None:
                raise ValueError("decoding with a KVCache needs the start position of every row")
            positions = start.to(tokens.device)[:, None] + torch.arange(length, device=tokens.device)
            kv_len = int(positions.max()) + 1
            if kv_len > cache.max_seq_len:
                raise ValueError(f"position {kv_len - 1} is beyond the KV cache ({cache.max_seq_len} positions)")
            mask = torch.arange(kv_len, device=tokens.device) <= positions[:, None, :, None]
        cos, sin = rotary_angles(positions, self.args.head_dim, self.args.rope_theta)
        h = self.tok_embeddings(tokens)
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, positions, mask, cache, i, kv_len)
        return self.output(self.norm(h)).float()

    def forward_packed(self, tokens: torch.Tensor, seqlens: list[int]) -> torch.Tensor:
        """Training forward over packed sequences: logits ``[N, vocab_size]`` for ``tokens [N]``.

        ``tokens`` is the concatenation of ``len(seqlens)`` independent sequences (the originals'
        packed batch). Each restarts at position 0 and attends only to its own earlier tokens, the
        original's block-diagonal causal mask. The sequences are laid out as right-padded rows of one
        causal batch: the same result as that mask, without its ``N x N`` memory and work.
        """
        if sum(seqlens) != len(tokens) or min(seqlens, default=0) < 1:
            raise ValueError(f"seqlens {seqlens} must be positive and sum to the {len(tokens)} tokens")
        rows = pad_right(tokens.split(list(seqlens)), tokens.device)[0]
        keep = torch.arange(rows.shape[1], device=tokens.device) < torch.tensor(seqlens, device=tokens.device)[:, None]
        return self(rows)[keep]

    @classmethod
    def from_state_dict(cls, model_args: dict, state_dict: dict, output_bias: bool) -> Transformer:
        """Build the model described by a checkpoint's ``model_args`` and load its weights (strict).

        Raises ValueError when the arguments or the parameter names and shapes do not fit.
        """
        with torch.device("meta"):
            model = cls(ModelArgs.from_dict(model_args), output_bias)
        try:
            model.load_state_dict(state_dict, strict=True, assign=True)
        except RuntimeError as e:
            raise ValueError(f"the weights do not fit the model_args: {e}") from e
        return model.eval()


# ---------------------------------------------------------------------------------------------
# Batched prefill and sampling, shared by the unit LM and ELLA-V
# ---------------------------------------------------------------------------------------------


def pad_right(sequences: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D LongTensors with 0: ``(tokens [B, T_max], lengths [B])``."""
    tokens = nn.utils.rnn.pad_sequence(list(sequences), batch_first=True).to(device)
    lengths = torch.tensor([len(s) for s in sequences], device=device)
    return tokens, lengths


def sequence_logprobs(model: Transformer, sequences: list[torch.Tensor], batch_size: int = 16) -> list[torch.Tensor]:
    """``log p(ids[i] | ids[:i])`` for i >= 1 of each 1-D id sequence: FloatTensors ``[len - 1]`` (nats).

    Runs ``batch_size`` right-padded sequences per forward pass (padding never changes the result), taken in
    order of length so that each batch pads little; the results come back in the order of ``sequences``.
    """
    by_length = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    result: list[torch.Tensor] = [torch.empty(0)] * len(sequences)
    for begin in range(0, len(sequences), batch_size):
        chunk = by_length[begin : begin + batch_size]
        tokens, lengths = pad_right([sequences[i] for i in chunk], model.device)
        logprobs = F.log_softmax(model(tokens[:, :-1]), dim=-1)
        targets = logprobs.gather(-1, tokens[:, 1:, None]).squeeze(-1).cpu()
        for i, row, length in zip(chunk, targets, lengths.tolist()):
            result[i] = row[: length - 1]
    return result


def prefill(
    model: Transformer,
    prompts: list[torch.Tensor],
    max_new_tokens: int,
    chunk_size: int | None = None,
    cache_dtype: torch.dtype | None = None,
) -> tuple[KVCache, torch.Tensor, torch.Tensor]:
    """Run the prompts (1-D LongTensors) through the model into a fresh cache.

    Returns ``(cache, logits [B, vocab] at each prompt's last token, lengths [B])``; the cache has room
    for ``max_new_tokens`` more tokens per row and holds ``cache_dtype`` (None: the weights' dtype).
    ``chunk_size`` splits the prompts into pieces of at most that many positions (bounds memory for
    long prompts; the result is the same).
    """
    tokens, lengths = pad_right(prompts, model.device)
    batch, longest = tokens.shape
    cache = model.new_cache(batch, longest + max_new_tokens, cache_dtype)
    chunk_size = chunk_size or longest
    last = lengths - 1
    last_logits = torch.empty(batch, model.args.vocab_size, device=model.device)
    for begin in range(0, longest, chunk_size):
        logits = model(tokens[:, begin : begin + chunk_size], torch.full_like(lengths, begin), cache)
        rows = ((last >= begin) & (last < begin + chunk_size)).nonzero().squeeze(1)
        last_logits[rows] = logits[rows, last[rows] - begin]
    return cache, last_logits, lengths


def new_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (a fresh random seed when None)."""
    seed = check_seed(seed)
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def sample(
    logits: torch.Tensor,
    temperature: float,
    top_p: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token per row of ``logits [B, V]``: LongTensor ``[B]``.

    ``temperature == 0``: argmax. Otherwise ``softmax(logits / temperature)``, keep the ``top_k`` most
    likely tokens, then the nucleus: a token is kept when the probability mass of the tokens more likely
    than it is <= ``top_p`` (``top_p = 0`` keeps only the most likely token, ``top_p = 1`` keeps all);
    renormalise and draw with ``generator``.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs, order = torch.softmax(logits.float() / temperature, dim=-1).sort(dim=-1, descending=True)
    if top_k is not None:
        probs[:, top_k:] = 0.0
        probs = probs / probs.sum(dim=-1, keepdim=True)
    probs = probs.masked_fill(probs.cumsum(dim=-1) - probs > top_p, 0.0)
    choice = torch.multinomial(probs / probs.sum(dim=-1, keepdim=True), 1, generator=generator)
    return order.gather(-1, choice).squeeze(-1)


def steps(count: int, progress: bool, description: str) -> Iterable[int]:
    """``range(count)``, shown as a tqdm progress bar when ``progress`` is True."""
    if not progress:
        return range(count)
    from tqdm.auto import tqdm

    return tqdm(range(count), desc=description, unit="tok")
