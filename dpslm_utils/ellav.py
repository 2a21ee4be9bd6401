"""ELLA-V: deduplicated units (or phones) -> WavTokenizer codec tokens (40 Hz), by interleaved generation.

Vocabulary (always the checkpoint's own ``token_to_id_dict``): UNK 0, BOS 1, EOP 2 ("end of
phone"), EOS 3, then the unit tokens ``"u{n}"`` in *string* order (u0, u1, u10, u11, ...), then the
codec tokens ``"0"`` .. ``"4095"``. The released phone model (:meth:`ELLAV.from_pretrained_phones`)
has ARPAbet phones (``"AA0"``, ..., ``"SIL"``, ``"SPN"``) in place of the units; everything else is the same.

Generation for deduplicated units p_1..p_n starts from the prompt ``[p_1 .. p_n, BOS, p_1]``. The
model then writes codec tokens for the current unit and closes it with EOP; after each EOP the next
unit token is forced as the next input, and after the n-th EOP the row is finished (EOS is forced
from then on). EOP is also forced once more than ``max_codec_tokens_per_phone + 1`` tokens followed
the last EOP; as that count includes the forced unit token, the first unit can receive up to
``max + 2`` codec tokens and every later unit up to ``max + 1`` (the original's behaviour, kept so
that outputs match). ``max_tokens`` counts every generated token (codec, EOP and unit tokens).

Names: ELLA-V was written for phones, and this module keeps the original's names where they mirror
its API (``max_codec_tokens_per_phone``, ``num_phone_types``, EOP). A "phone" here is a unit. The
per-unit cap has this one name everywhere in the package, :meth:`DPSLM.synthesize
<dpslm_utils.pipeline.DPSLM.synthesize>` included.

Training (:class:`ELLAVTask`) reads the original ``encode_train`` sequence (:func:`ellav_example`): the
deduplicated units, BOS, then units, codec tokens and EOPs interleaved in time, then EOS. The inference
prompt (:func:`inference_prompt`) is its beginning, ``[p_1 .. p_n, BOS, p_1]``, and the forcing above
follows the rest: a model that predicts an example's tokens generates that example up to its last EOP.

Checkpoint format: ``{"model_args": {..., "max_batch_size"}, "tokenizer": {"token_to_id_dict",
"num_phone_types", "phone_token_rate", "num_codec_types", "codec_token_rate", ...}, "model_state":
{...}}`` — the unit LM's decoder with a bias on the output projection.
"""

from __future__ import annotations

import functools
import logging
import numbers
import os
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from . import checkpoints, datasets, registry
from .batches import PackedBatch, data_fingerprint
from .checks import MAX_NEW_TOKENS, as_units, check_count, check_sampling
from .datasets import NUM_CODEC_TYPES, UNIT_NAME  # the data files' unit names and codes: ELLA-V's vocabulary
from .fast import kv_cache_dtype, make_fast
from .transformer import (
    Transformer,
    new_generator,
    pad_right,
    prefill,
    sample,
    steps,
)

log = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("model_args", "tokenizer", "model_state")
SPECIAL_TOKENS = ("UNK", "BOS", "EOP", "EOS")

CODEC_RATE, UNIT_RATE, PHONE_RATE = 40.0, 50.0, 100.0
MAX_CODEC_TOKENS_PER_PHONE = 10
"""The original's default cap on codec tokens per unit (the first unit may get 2 more, later ones 1 more)."""


def unit_tokenizer(k: int, phones: tuple[str, ...] | None = None) -> dict:
    """The tokenizer dict of a units model (or, given ``phones``, of a phone model) as the original
    training scripts build it.

    The unit tokens ``u0 .. u{k-1}`` (or the phones) follow the 4 special tokens in string order; codec
    tokens follow. Phone models align phones at 100 Hz (10 ms) and sandwich every phone but UNK.
    """
    conditioning = sorted(phones if phones is not None else (f"u{n}" for n in range(k)))
    names = [*SPECIAL_TOKENS, *conditioning, *(str(c) for c in range(NUM_CODEC_TYPES))]
    return {
        "token_to_id_dict": {name: i for i, name in enumerate(names)}, "num_phone_types": len(conditioning),
        "phone_token_rate": UNIT_RATE if phones is None else PHONE_RATE, "num_codec_types": NUM_CODEC_TYPES,
        "codec_token_rate": CODEC_RATE, "tokens_not_to_sandwich": [] if phones is None else ["UNK"],
        "num_special_types": len(SPECIAL_TOKENS),
        **{f"{name}_token": name for name in SPECIAL_TOKENS},
        **{f"{name}_id": i for i, name in enumerate(SPECIAL_TOKENS)},
    }  # fmt: skip


# -- the sequence format: the training example and, beside it, the inference prompt -------------------


@dataclass(frozen=True)
class ELLAVExample:
    """One ELLA-V training sequence: ``ids [L]`` and ``loss_mask [L - 1]`` (which targets ``ids[1:]`` count)."""

    ids: torch.LongTensor
    loss_mask: torch.BoolTensor


def ellav_example(frame_units, codes, tokenizer: dict) -> ELLAVExample:
    """The original ``encode_train``: framewise units ``[T_u]`` (50 Hz) + codes ``[T_c]`` (40 Hz) -> ids, loss mask.

    ``frame_units`` holds unit numbers (ints) or names (``"u74"``). The sequence is the deduplicated
    units ("global advance"), BOS, then every unit (at its first frame), codec token (at its frame)
    and EOP (at the end of each unit's run) sorted by time, at equal times EOP first, then the unit,
    then codes; then EOS. Tokens outside the vocabulary become UNK (the trainer's loss ignores UNK
    targets). Its first ``n + 2`` ids are the :func:`inference_prompt` of the n deduplicated units.

    The loss mask is ``~user_input[1:]``, where the original marks as user input BOS and the ids
    strictly *above* the first unit id and below the codec ids. So the unit with the lowest id (u0)
    is not masked and is predicted by the loss like a codec token: a quirk of the released models'
    training, reproduced here as it is.
    """
    vocab = tokenizer["token_to_id_dict"]
    unit_rate, codec_rate = float(tokenizer["phone_token_rate"]), float(tokenizer["codec_token_rate"])
    names = [u if isinstance(u, str) else f"u{int(u)}" for u in _as_list(frame_units)]
    codes = _as_list(codes)
    skip = set(tokenizer.get("tokens_not_to_sandwich", []))

    runs = []  # (name, first frame, last frame + 1)
    for i, name in enumerate(names):
        if runs and runs[-1][0] == name:
            runs[-1][2] = i + 1
        else:
            runs.append([name, i, i + 1])
    runs = [r for r in runs if r[0] not in skip]
    # (time in seconds, priority, token): EOP 0, unit 1, codec 2; times as the original computes them
    events = [(end / unit_rate, 0, "EOP") for _, _, end in runs]
    events += [(start / unit_rate, 1, name) for name, start, _ in runs]
    events += [(i / codec_rate, 2, str(c)) for i, c in enumerate(codes)]
    events.sort(key=lambda e: (e[0], e[1]))
    tokens = [name for name, _, _ in runs] + ["BOS"] + [e[2] for e in events] + ["EOS"]

    unk = vocab["UNK"]
    ids = torch.tensor([vocab.get(t, unk) for t in tokens], dtype=torch.long)
    specials, unit_types = int(tokenizer["num_special_types"]), int(tokenizer["num_phone_types"])
    user_input = ((ids > specials) & (ids < specials + unit_types)) | (ids == vocab["BOS"])
    return ELLAVExample(ids, ~user_input[1:])


def inference_prompt(unit_ids: torch.Tensor, bos_id: int) -> torch.Tensor:
    """The prompt ``[p_1 .. p_n, BOS, p_1]`` for the token ids ``unit_ids [n]`` of deduplicated units: the
    beginning of their :func:`ellav_example`, whose rest generation writes."""
    return torch.cat([unit_ids, torch.tensor([bos_id]), unit_ids[:1]])


def _as_list(values) -> list:
    return values.tolist() if isinstance(values, (torch.Tensor, np.ndarray)) else list(values)


def durations_match(num_units: int, num_codes: int, tokenizer: dict, tolerance: float = 0.1) -> bool:
    """The original's strict check: unit and codec durations differ by at most ``tolerance`` seconds."""
    return abs(num_units / tokenizer["phone_token_rate"] - num_codes / tokenizer["codec_token_rate"]) <= tolerance


def official_checkpoint(transformer: Transformer, tokenizer: dict) -> dict:
    """``transformer`` and its ``tokenizer`` in ELLA-V's file layout ``{"model_args", "tokenizer", "model_state"}``."""
    return {"model_args": {**transformer.args.to_dict(), "max_batch_size": 0}, "tokenizer": tokenizer,
            "model_state": transformer.state_dict()}  # fmt: skip


@dataclass(frozen=True)
class Alignment:
    """How many codec tokens (40 Hz frames) each deduplicated prompt unit received."""

    units: torch.Tensor  # [N] deduplicated prompt units
    codec_counts: torch.Tensor  # [N] codec tokens generated for each unit (0 is possible)
    codec_rate: float

    @property
    def durations(self) -> torch.Tensor:
        """Seconds of speech per unit, FloatTensor ``[N]``."""
        return self.codec_counts / self.codec_rate

    def frame_units(self) -> torch.Tensor:
        """The unit behind each generated codec token, LongTensor ``[sum(codec_counts)]``."""
        return self.units.repeat_interleave(self.codec_counts)


class Generation(NamedTuple):
    """What :meth:`ELLAV.generate` returns for a batch of B prompts (unpacks as ``codes, finished, alignments``)."""

    codes: list[torch.Tensor]
    """``codes[i]``: LongTensor ``[L_i]`` of WavTokenizer codes in [0, 4096) at 40 Hz."""
    finished: list[bool]
    """``finished[i]`` is False when row i ran out of ``max_tokens`` before its last unit was done."""
    alignments: list[Alignment]
    """``alignments[i]``: how many codes each deduplicated unit of prompt i received."""


class ELLAV(nn.Module):
    """Units (or phones) -> WavTokenizer (small_600, 40 Hz) codec tokens with the ELLA-V decoder.

    ``phone_names[n]`` is the token of unit ``n``: ``"u{n}"`` for a units model, the n-th phone (in
    token order) for a phone model; prompts may give units as ints or as these names.
    """

    def __init__(self, transformer: Transformer, tokenizer: dict):
        super().__init__()
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.random_weights = False
        self.fast: str | None = None  # reduced-precision format (dpslm_utils.fast), None = as loaded
        vocab = tokenizer["token_to_id_dict"]
        self.k = int(tokenizer["num_phone_types"])
        self.unit_rate, self.codec_rate = tokenizer["phone_token_rate"], tokenizer["codec_token_rate"]
        self.bos_id, self.eop_id, self.eos_id = (vocab[name] for name in SPECIAL_TOKENS[1:])
        if len(vocab) != transformer.args.vocab_size:
            raise ValueError(f"the tokenizer has {len(vocab)} tokens, the model {transformer.args.vocab_size}")
        first = len(SPECIAL_TOKENS)
        conditioning = sorted((i, name) for name, i in vocab.items() if first <= i < first + self.k)
        self.reads_units = all(UNIT_NAME.fullmatch(name) for _, name in conditioning)
        self.phone_names = tuple(f"u{n}" for n in range(self.k)) if self.reads_units else tuple(n for _, n in conditioning)
        missing = [name for name in self.phone_names if name not in vocab]
        if missing or len(conditioning) != self.k:
            raise ValueError(f"the tokenizer's {self.k} unit tokens are not u0 .. u{self.k - 1} nor phones: lacks {missing[:3]}")
        self.unit_of_name = {name: n for n, name in enumerate(self.phone_names)}
        codec_of_token = torch.full((len(vocab),), -1)
        for codec in range(tokenizer["num_codec_types"]):
            codec_of_token[vocab[str(codec)]] = codec
        self.register_buffer("unit_token_ids", torch.tensor([vocab[n] for n in self.phone_names]), persistent=False)
        self.register_buffer("codec_of_token", codec_of_token, persistent=False)

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device=None, dtype: torch.dtype | None = None, fast: bool | str = False
    ) -> ELLAV:
        """Load an official ELLA-V checkpoint ``{"model_args", "tokenizer", "model_state"}``.

        ``fast=True``: reduced precision for faster generation (int8 weights on a CPU; see :mod:`dpslm_utils.fast`).
        """
        checkpoint = checkpoints.load_checkpoint(path)
        checkpoints.require_keys(checkpoint, CHECKPOINT_KEYS, path, "ELLA-V")
        try:
            args, state = checkpoint["model_args"], checkpoint["model_state"]
            transformer = Transformer.from_state_dict(args, state, output_bias=True)
            model = cls(transformer, checkpoint["tokenizer"])
        except (ValueError, KeyError, TypeError) as e:
            raise checkpoints.CheckpointError(f"{path} is not a valid ELLA-V checkpoint: {e!r}") from e
        model.to(device=device, dtype=dtype)
        model.fast = make_fast(model.transformer, fast, weight_bound=True)
        return model

    @classmethod
    def from_pretrained(
        cls, k: int, lmbda: float, device=None, dtype: torch.dtype | None = None, fast: bool | str = False
    ) -> ELLAV:
        """The released ELLA-V model for (k, λ) units (``fast``: see :meth:`from_checkpoint`)."""
        load = functools.partial(cls.from_checkpoint, device=device, dtype=dtype, fast=fast)
        return checkpoints.load_pretrained(load, registry.ellav_file(k, lmbda), "ellav", k=k)

    @classmethod
    def from_pretrained_phones(cls, device=None, dtype: torch.dtype | None = None) -> ELLAV:
        """The released phone model: ARPAbet phones (:data:`~dpslm_utils.registry.US_ARPA_PHONES`) -> codes."""
        load = functools.partial(cls.from_checkpoint, device=device, dtype=dtype)
        return checkpoints.load_pretrained(load, registry.ELLAV_PHONEMES, "phone_ellav")

    def __repr__(self) -> str:
        t = self.transformer
        vocabulary = {"k" if self.reads_units else "phones": self.k}
        return checkpoints.describe(self, **vocabulary, unit_rate=f"{self.unit_rate:g}Hz", codec_rate=f"{self.codec_rate:g}Hz",
                                    dim=t.args.dim, n_layers=t.args.n_layers, dtype=self.fast or t.dtype,
                                    device=t.device)  # fmt: skip

    def deduplicated_units(self, units) -> torch.Tensor:
        """Unit ids (ints, or names ``"u{n}"`` / phones) with consecutive repeats removed: LongTensor ``[N]``."""
        if isinstance(units, (list, tuple)):
            units = [self._unit_number(u) if isinstance(u, str) else u for u in units]
        return torch.unique_consecutive(as_units(units, self.k, "prompt"))

    def _unit_number(self, name: str) -> int:
        if name not in self.unit_of_name:
            allowed = f"'u0' .. 'u{self.k - 1}' (or ints)" if self.reads_units else " ".join(self.phone_names)
            raise ValueError(f"{name!r} is not a {'unit' if self.reads_units else 'phone'} of this model: use {allowed}")
        return self.unit_of_name[name]

    def encode(self, units) -> torch.Tensor:
        """The inference prompt ``[p_1 .. p_n, BOS, p_1]`` of token ids for deduplicated units p."""
        return inference_prompt(self.unit_token_ids.cpu()[self.deduplicated_units(units)], self.bos_id)

    @torch.inference_mode()
    def generate_tokens(
        self,
        prompts,
        max_tokens: int = 1000,
        max_codec_tokens_per_phone: int = MAX_CODEC_TOKENS_PER_PHONE,
        temperature: float = 1.0,
        top_p: float = 0.8,
        seed: int | None = None,
        chunk_size: int | None = None,
        progress: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw interleaved token stream: ``(tokens [B, steps], finished BoolTensor [B])``.

        Each row holds codec tokens, EOPs and the forced unit tokens; rows that finished before the
        others continue with EOS (and an EOP every ``max + 2`` steps). See :meth:`generate`.
        """
        max_tokens = check_count("max_tokens", max_tokens, maximum=MAX_NEW_TOKENS)
        max_codec_tokens_per_phone = check_count("max_codec_tokens_per_phone", max_codec_tokens_per_phone, minimum=0)
        check_sampling(temperature, top_p)
        if chunk_size is not None:
            chunk_size = check_count("chunk_size", chunk_size)
        encoded = [self.encode(units) for units in _prompt_list(prompts)]

        generator = new_generator(seed, self.transformer.device)
        cache, logits, position = prefill(self.transformer, encoded, max_tokens, chunk_size, kv_cache_dtype(self.fast))
        phone_tokens, num_phones = pad_right([prompt[:-2] for prompt in encoded], self.transformer.device)
        since_eop = torch.zeros_like(num_phones)
        phone_index = torch.zeros_like(num_phones)
        forced = torch.full_like(num_phones, -1)
        generated = []
        for _ in steps(max_tokens, progress, "ELLA-V"):
            token = torch.where(forced >= 0, forced, sample(logits, temperature, top_p, generator=generator))
            is_eop = token == self.eop_id
            since_eop = torch.where(is_eop, 0, since_eop + 1)
            phone_index += is_eop
            finished = phone_index >= num_phones
            if finished.all():
                break
            generated.append(token)
            logits = self.transformer(token[:, None], position, cache)[:, -1]
            position += 1
            next_phone = phone_tokens.gather(1, phone_index.clamp(max=phone_tokens.shape[1] - 1)[:, None])[:, 0]
            # forced next input: the next unit after an EOP, else EOP after too many tokens, else EOS when
            # finished (the original forces EOP and EOS together there and argmax picks EOP, the lower id)
            forced = torch.where(is_eop & ~finished, next_phone, -1)
            forced = torch.where((forced < 0) & (since_eop > max_codec_tokens_per_phone + 1), self.eop_id, forced)
            forced = torch.where((forced < 0) & finished, self.eos_id, forced)
        tokens = torch.stack(generated, dim=1) if generated else torch.empty(len(encoded), 0, dtype=torch.long)
        return tokens.cpu(), finished.cpu()

    def generate(
        self,
        prompts,
        max_tokens: int = 1000,
        max_codec_tokens_per_phone: int = MAX_CODEC_TOKENS_PER_PHONE,
        temperature: float = 1.0,
        top_p: float = 0.8,
        seed: int | None = None,
        chunk_size: int | None = None,
        progress: bool = False,
    ) -> Generation:
        """Codec tokens for a batch of unit prompts: a :class:`Generation` ``(codes, finished, alignments)``.

        ``prompts``: one unit sequence or a list of them, as ints or ``"u{n}"`` names (consecutive
        repeats are removed first). ``codes[i]`` is LongTensor ``[L_i]`` of WavTokenizer codes in
        [0, 4096) at 40 Hz; ``finished[i]`` is False when row i ran out of ``max_tokens`` before its
        last unit was done (a warning is issued). ``alignments[i]`` (:class:`Alignment`) says how many
        codes each deduplicated unit received. Sampling: temperature 0 = argmax, else softmax(logits /
        temperature) with nucleus ``top_p`` (0 = most likely token only), reproducible with ``seed``.
        ``chunk_size`` prefills long prompts in chunks of that many tokens (same result).
        """
        prompts = _prompt_list(prompts)
        tokens, finished = self.generate_tokens(
            prompts, max_tokens=max_tokens, max_codec_tokens_per_phone=max_codec_tokens_per_phone,
            temperature=temperature, top_p=top_p, seed=seed, chunk_size=chunk_size, progress=progress,
        )
        if not finished.all():
            warnings.warn(
                f"{int((~finished).sum())} of {len(finished)} sequences did not reach their last unit within "
                f"max_tokens={max_tokens}; their codes are cut short. Increase max_tokens.",
                stacklevel=2,
            )
        codec = self.codec_of_token.cpu()[tokens]
        codes = [row[row >= 0] for row in codec]
        is_eop = (tokens == self.eop_id).long()
        unit_index = is_eop.cumsum(dim=1) - is_eop  # EOPs before each token = the unit it belongs to
        alignments = []
        for units, index, row in zip(map(self.deduplicated_units, prompts), unit_index, codec):
            counts = torch.bincount(index[row >= 0], minlength=len(units))
            alignments.append(Alignment(units, counts, self.codec_rate))
        return Generation(codes, finished.tolist(), alignments)


def _prompt_list(prompts) -> list:
    """A list of unit sequences from one sequence or a list of sequences."""
    if isinstance(prompts, (torch.Tensor, np.ndarray)) and prompts.ndim == 1:
        return [prompts]
    if isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], (str, numbers.Integral)):
        return [prompts]
    if isinstance(prompts, (list, tuple, torch.Tensor, np.ndarray)) and len(prompts) > 0:
        return list(prompts)
    raise ValueError(f"prompts must be a unit sequence or a non-empty list of unit sequences, got {prompts!r}")


# -- training: units paired with their codes, the training task -------------------------------------


class ELLAVTask:
    """ELLA-V's training task (a :class:`dpslm_utils.training.Task`): whole utterances, each one
    :func:`ellav_example`; checkpoints in ELLA-V's layout with the tokenizer of :func:`unit_tokenizer`."""

    output_bias = True

    def __init__(self, config: dict, train: list, val: list):
        """``train``, ``val``: ``(framewise units [T_u], codes [T_c])`` of each utterance."""
        self.config, self.train, self.val = config, train, val
        self.tokenizer = unit_tokenizer(config["k"])
        self.vocab_size = len(self.tokenizer["token_to_id_dict"])
        self.ignore_index = self.tokenizer["UNK_id"]
        frames = sum(len(u) for u, _ in train)
        units = sum(len(torch.unique_consecutive(u)) for u, _ in train)
        self.summary = {"train_files": len(train), "val_files": len(val), "train_hours": round(frames / 50 / 3600, 4),
                        "train_codes": sum(len(c) for _, c in train),
                        "units_per_second": round(units / max(frames / 50, 1e-9), 2)}  # fmt: skip

    @classmethod
    def from_folders(cls, config: dict, units_dir, codes_dir, val_dir=None) -> ELLAVTask:
        """Unit files under ``units_dir`` (validation: ``val_dir``'s, or a held-out fraction) with the codec file of the
        same relative path under ``codes_dir``; files whose durations differ by more than 0.1 s are reported and skipped."""
        tokenizer = unit_tokenizer(config["k"])

        def pairs(unit_root) -> dict:
            result, mismatched = {}, []
            for key, (unit_file, code_file) in datasets.paired_files(unit_root, codes_dir).items():
                frame_units, frame_codes = datasets.load_frame_units(unit_file, config["k"]), datasets.load_codes(code_file)
                if durations_match(len(frame_units), len(frame_codes), tokenizer) and len(frame_units):
                    result[key] = (frame_units.int(), frame_codes.int())
                else:
                    mismatched.append(f"{key} ({len(frame_units) / 50:.2f} s of units, {len(frame_codes) / 40:.2f} s of codes)")
            if mismatched:
                shown = "".join(f"\n  {name}" for name in [*mismatched[:10], *(["..."] if len(mismatched) > 10 else [])])
                log.warning("skipped %d file(s) whose unit and codec durations differ by more than 0.1 s:%s", len(mismatched), shown)
            return result

        found = pairs(units_dir)
        if val_dir is not None:
            train, val = found, pairs(val_dir)
        else:
            train, val = datasets.hold_out(found, config["val_fraction"], config["seed"])
        if not train or not val:
            raise ValueError("no training or no validation utterances left")
        return cls(config, list(train.values()), list(val.values()))

    def num_items(self) -> int:
        return len(self.train)

    def fingerprint(self) -> str:
        return data_fingerprint(tensor for pairs in (self.train, self.val) for pair in pairs for tensor in pair)

    def _pack(self, pairs: list) -> PackedBatch:
        examples = [ellav_example(units, codes, self.tokenizer) for units, codes in pairs]
        return PackedBatch.pack([e.ids for e in examples], [e.loss_mask for e in examples])

    def batch(self, epoch: int, items: torch.Tensor) -> PackedBatch:
        return self._pack([self.train[int(i)] for i in items])

    def val_batches(self, rank: int, world_size: int):
        pairs = self.val[rank::world_size]
        for begin in range(0, len(pairs), self.config["batch_size"]):
            yield self._pack(pairs[begin : begin + self.config["batch_size"]])

    def checkpoint(self, model: Transformer) -> dict:
        return official_checkpoint(model, self.tokenizer)
