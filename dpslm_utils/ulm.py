"""The unit language model (Mistral-ULM): how likely is a unit sequence, and how does it continue?

Token ids are the units shifted by one: ``[0 (BOS)] + [u + 1 for u in units]``, so unit ``u`` is
token ``u + 1`` and the vocabulary has ``k + 1`` entries. There is no end-of-sequence token.
All log-probabilities are natural logarithms (nats).

Checkpoint format (Mistral-ULM ``save_pretrained_checkpoint``):
``{"model_args": {dim, n_layers, head_dim, hidden_dim, n_heads, n_kv_heads, dropout, norm_eps,
vocab_size, rope_theta}, "model_state_dict": {...}}`` (no output bias).
"""

from __future__ import annotations

import functools
import os

import torch
from torch import nn

from . import checkpoints, registry
from .checks import MAX_NEW_TOKENS, as_units, check_count, check_sampling
from .fast import kv_cache_dtype, make_fast
from .transformer import (
    Transformer,
    new_generator,
    prefill,
    sample,
    sequence_logprobs,
    steps,
)

BOS_ID = 0
UNIT_OFFSET = 1
"""Token id of unit ``u`` is ``u + UNIT_OFFSET``; id 0 is BOS."""

CHECKPOINT_KEYS = ("model_args", "model_state_dict")


def official_checkpoint(transformer: Transformer, dropout: float = 0.0) -> dict:
    """``transformer`` in the Mistral-ULM file layout ``{"model_args", "model_state_dict"}``, ready for ``torch.save``."""
    args = transformer.args.to_dict()
    before_dropout = ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads")  # the original's key order
    model_args = {name: args.pop(name) for name in before_dropout} | {"dropout": dropout} | args
    return {"model_args": model_args, "model_state_dict": transformer.state_dict()}


def _with_bos(units: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.tensor([BOS_ID]), units + UNIT_OFFSET])


def load_transformer(path: str | os.PathLike, family: str) -> Transformer:
    """The decoder of a Mistral-ULM checkpoint ``{"model_args", "model_state_dict"}`` (unit or phone LM)."""
    checkpoint = checkpoints.load_checkpoint(path)
    checkpoints.require_keys(checkpoint, CHECKPOINT_KEYS, path, f"Mistral-ULM {family}")
    try:
        return Transformer.from_state_dict(checkpoint["model_args"], checkpoint["model_state_dict"], output_bias=False)
    except ValueError as e:
        raise checkpoints.CheckpointError(f"{path} is not a valid {family} checkpoint: {e}") from e


class UnitLM(nn.Module):
    """A Mistral-style language model over deduplicated units (ids ``0..k-1``)."""

    def __init__(self, transformer: Transformer):
        super().__init__()
        self.transformer = transformer
        self.random_weights = False
        self.fast: str | None = None  # reduced-precision format (dpslm_utils.fast), None = as loaded

    @property
    def k(self) -> int:
        """Number of units (codebook size); the vocabulary is ``k + 1`` with BOS."""
        return self.transformer.args.vocab_size - UNIT_OFFSET

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device=None, dtype: torch.dtype | None = None, fast: bool | str = False
    ) -> UnitLM:
        """Load an official Mistral-ULM checkpoint ``{"model_args", "model_state_dict"}``.

        ``fast=True``: reduced precision for faster generation (int8 weights on a CPU; see :mod:`dpslm_utils.fast`).
        """
        model = cls(load_transformer(path, "unit LM")).to(device=device, dtype=dtype)
        model.fast = make_fast(model.transformer, fast, weight_bound=True)
        return model

    @classmethod
    def from_pretrained(
        cls, k: int, lmbda: float, hours: str = "1k", device=None, dtype=None, fast: bool | str = False
    ) -> UnitLM:
        """The released unit LM for (k, λ), trained on 1k hours (all 24 pairs) or 60k hours (k=500, λ=4500)."""
        load = functools.partial(cls.from_checkpoint, device=device, dtype=dtype, fast=fast)
        return checkpoints.load_pretrained(load, registry.unit_lm_file(k, lmbda, hours), "unit_lm", k=k)

    def __repr__(self) -> str:
        t = self.transformer
        return checkpoints.describe(self, k=self.k, dim=t.args.dim, n_layers=t.args.n_layers,
                                    dtype=self.fast or t.dtype, device=t.device)  # fmt: skip

    def tokenize(self, units) -> torch.Tensor:
        """Token ids ``[N + 1]``: BOS (0), then each unit plus one."""
        return _with_bos(as_units(units, self.k))

    @torch.inference_mode()
    def logits(self, units) -> torch.Tensor:
        """``[N, k + 1]`` float32: row i scores token id ``units[i] + 1`` given BOS and ``units[:i]``."""
        ids = self.tokenize(units).to(self.transformer.device)
        return self.transformer(ids[None, :-1])[0]

    @torch.inference_mode()
    def _unit_logprobs(self, batch: list, batch_size: int = 16) -> list[torch.Tensor]:
        """For each sequence, ``log p(unit_i | BOS, units before i)`` as FloatTensor ``[N]`` (nats).

        Sequences run ``batch_size`` at a time in order of length, so each padded batch holds
        similar lengths (right padding needs no mask: causal attention never looks ahead to it).
        """
        if not isinstance(batch, (list, tuple)) or len(batch) == 0:
            raise ValueError("expected a non-empty list of unit sequences")
        batch_size = check_count("batch_size", batch_size)
        return sequence_logprobs(self.transformer, [self.tokenize(units) for units in batch], batch_size)

    def loglikelihood(self, units) -> float:
        """``Σ_i log p(unit_i | BOS, units before i)`` in nats for one deduplicated unit sequence."""
        return self.loglikelihood_batch([units])[0]

    def loglikelihood_batch(self, batch: list, batch_size: int = 16) -> list[float]:
        """:meth:`loglikelihood` of each sequence, computed ``batch_size`` sequences at a time."""
        return [row.sum().item() for row in self._unit_logprobs(batch, batch_size)]

    def surprisal(self, units) -> torch.Tensor:
        """``-log p(unit_i | BOS, units before i)`` per unit, FloatTensor ``[N]`` in nats (sum = -loglikelihood)."""
        return -self._unit_logprobs([units])[0]

    @torch.inference_mode()
    def generate(
        self,
        prompt_units,
        max_new_units: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        n: int = 1,
        seed: int | None = None,
        progress: bool = False,
    ) -> list[torch.Tensor]:
        """``n`` continuations of ``prompt_units``, each LongTensor ``[max_new_units]`` of units ``0..k-1``.

        The n rows are decoded as one batch with a KV cache; BOS is never drawn. An empty prompt
        (``[]``) samples unconditionally from BOS. Sampling as :func:`dpslm_utils.transformer.sample`
        (temperature 0 = greedy), reproducible with ``seed``.
        """
        prompt = _with_bos(as_units(prompt_units, self.k, "prompt_units", allow_empty=True))
        max_new_units = check_count("max_new_units", max_new_units, maximum=MAX_NEW_TOKENS)
        n = check_count("n", n)
        check_sampling(temperature, top_p, top_k)

        generator = new_generator(seed, self.transformer.device)
        cache, logits, position = prefill(self.transformer, [prompt] * n, max_new_units, None, kv_cache_dtype(self.fast))
        new_tokens = []
        for step in steps(max_new_units, progress, "unit LM"):
            logits[:, BOS_ID] = float("-inf")
            token = sample(logits, temperature, top_p, top_k, generator)
            new_tokens.append(token)
            if step + 1 < max_new_units:
                logits = self.transformer(token[:, None], position, cache)[:, -1]
                position = position + 1
        units = (torch.stack(new_tokens, dim=1) - UNIT_OFFSET).cpu()
        return list(units)
