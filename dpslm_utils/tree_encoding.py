"""Every audio file under a folder -> files under another, the tree mirrored: DPDP units (:func:`encode_tree`,
what ``dpslm encode`` runs) or WavTokenizer codes (:func:`encode_codec_tree`, ``dpslm encode-codec``).

    result = encode_tree("LibriSpeech/dev-clean", "units/k500", k=500, lmbda=4500)  # x.txt + x.npy per x.flac
    result.failed, result.bitrate                                                     # skipped files; units/s, bits/s

Each is a checked plan, then its run: :func:`plan_units` / :func:`plan_codes` check everything (the input folder,
its audio files, the output folder and the settings recorded in it) and load no model; ``plan.run()`` loads the
model once and encodes. The command line makes the plan before any model loads.

- Outputs are named by the input's path without its audio suffix (``sub/x.flac`` -> ``OUT_DIR/sub/x.npy``), so
  inputs that differ only in their suffix are refused.
- Resumable: a file whose outputs all exist is skipped; every output is written atomically.
- One folder, one set of settings: the first run records them (``OUT_DIR/dpslm_settings.json``); a run with
  other settings is refused (:class:`~dpslm_utils.settings_record.SettingsMismatch`).
- A file that cannot be encoded (unreadable, too long, out of memory) is logged, skipped and listed in the
  result; the others go on.
- Under ``torchrun --nproc-per-node N`` rank r encodes every N-th file (:func:`shard`) on its own device.

Only the standard library is imported at module level (torch when a plan is checked or run), so that the
command line refuses bad arguments quickly.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from . import registry
from .checks import AUDIO_SUFFIXES, check_creatable, clashes, first_few, check_file, check_folder, check_int, check_real, check_writable

if TYPE_CHECKING:
    from torch import Tensor

    from .quantize import Bitrate

log = logging.getLogger(__name__)

FEATURE_NAMES = ("wavlm", "mfcc", "fbank")
"""The names of :func:`dpslm_utils.feature_encoder`, listed here so that checking them needs no torch import."""
UNIT_FORMATS = ("txt", "npy")
"""``txt``: the deduplicated units as text (``u12 u7 u300``); ``npy``: int64 ``[N, 2]`` of (unit, duration in frames)."""
CODEC = "small_600_24k_4096"
"""The WavTokenizer of :func:`encode_codec_tree` by default: the 40 Hz codec ELLA-V predicts."""


def find_audio(in_dir: str | os.PathLike) -> list[Path]:
    """Every audio file under ``in_dir``, sorted (so all ranks agree on the order)."""
    return sorted(p for p in Path(in_dir).rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """The items rank ``rank`` of ``world_size`` processes handles: every world_size-th, from ``rank``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    return list(items[rank::world_size])


def units_text(units: Tensor) -> str:
    """Deduplicated units as the text the originals use: ``"u12 u7 u300"``."""
    return " ".join(f"u{u}" for u in units.tolist())


def each_audio(files: Sequence[str | os.PathLike], process: Callable[[Tensor, int], Any], failed: list, *, desc: str,
               progress: bool = True, report: bool = True) -> Iterator[tuple[Any, Any]]:  # fmt: skip
    """``(file, process(wav [1, samples], sample_rate))`` for each audio file, read as mono.

    A file that cannot be read or processed (ValueError, OSError, RuntimeError: unreadable, too short or long,
    out of memory) is appended to ``failed`` and, with ``report``, logged as skipped; the others go on.
    """
    from tqdm.auto import tqdm

    from .audio import load_mono

    for file in tqdm(files, desc=desc, disable=not progress):
        try:
            result = process(*load_mono(file))
        except (ValueError, OSError, RuntimeError) as e:
            failed.append(file)
            if report:
                with tqdm.external_write_mode():  # on a line of its own, not inside a progress bar
                    log.warning("skipped %s: %s", file, e)
            continue
        yield file, result


# -- the tree and its checks -------------------------------------------------------------------------


@dataclass(frozen=True)
class Tree:
    """The audio files under ``in_dir`` (sorted, each with its own output name) and the folder of their outputs."""

    in_dir: Path
    out_dir: Path
    files: tuple[Path, ...]

    def outputs(self, audio: Path, formats: Sequence[str]) -> dict[str, Path]:
        """``{format: OUT_DIR / (audio's path under IN_DIR, without its suffix) + "." + format}``."""
        base = self.out_dir / audio.relative_to(self.in_dir).with_suffix("")
        return {fmt: base.with_name(f"{base.name}.{fmt}") for fmt in formats}

    def done(self, audio: Path, formats: Sequence[str]) -> bool:
        return all(path.exists() for path in self.outputs(audio, formats).values())


def find_tree(in_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Tree:
    """The audio files of the folder ``in_dir``, for outputs under ``out_dir`` (creates nothing).

    Raises OSError/ValueError if ``in_dir`` is no folder or holds no audio, if two inputs would write the same
    outputs, or if ``out_dir`` cannot be a folder.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    files = audio_files(in_dir)
    check_unique_stems(files, in_dir)
    check_creatable(out_dir)
    return Tree(in_dir, out_dir, tuple(files))


def audio_files(in_dir: str | os.PathLike) -> list[Path]:
    """:func:`find_audio` of the folder ``in_dir``; OSError/ValueError if it is no folder or holds no audio file."""
    check_folder(in_dir)
    files = find_audio(in_dir)
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {in_dir}")
    return files


def check_unique_stems(files: Sequence[Path], in_dir: Path) -> None:
    """Outputs are named by the input's path without its audio suffix: refuse inputs that would share one."""
    shared = clashes([f.relative_to(in_dir) for f in files], key=lambda relative: relative.with_suffix(""))
    if shared:
        raise ValueError(f"inputs that differ only in their suffix would write the same outputs: {first_few(shared, 5)}. "
                         "Rename or move one of each")


def _checked_record(plan: UnitsPlan | CodesPlan) -> UnitsPlan | CodesPlan:
    """``plan`` once its OUT_DIR holds nothing of other settings (SettingsMismatch) and is a folder it can write in."""
    from .settings_record import check_settings

    check_settings(plan.tree.out_dir, plan.command, plan.settings, write=False)
    check_writable(plan.tree.out_dir)
    return plan


# -- units ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitsPlan:
    """DPDP units of every file of ``tree``, checked (made by :func:`plan_units`); :meth:`run` encodes them."""

    tree: Tree
    k: int
    lmbda: float | None
    """None until :meth:`run` finds the λ of ``units_per_second`` (a folder keeps the λ its first run found)."""
    units_per_second: float | None
    features: str
    codebook: Tensor | None
    """``[k, D]`` from a codebook file, or None: the released WavLM codebook of k."""
    codebook_sha256: str | None
    num_neighbors: int | None
    formats: tuple[str, ...]
    device: str | None = None
    progress: bool = True

    command: ClassVar[str] = "encode"

    @property
    def settings(self) -> dict:
        """What ``dpslm_settings.json`` records (and a later run must match)."""
        from .checkpoints import weights_mode

        settings = {"k": self.k, "lmbda": self.lmbda, "num_neighbors": self.num_neighbors, "weights": weights_mode()}
        if self.codebook is not None:  # the record of WavLM + a released codebook, plus what a codebook file changes
            settings |= {"features": self.features, "codebook": self.codebook_sha256}
            if self.features != "wavlm":
                del settings["weights"]
        if self.units_per_second is not None:
            settings["units_per_second"] = self.units_per_second
        return settings

    def load(self, device):
        """The model whose ``encode(wav, sample_rate)`` gives an :class:`~dpslm_utils.pipeline.EncodedSpeech`."""
        if self.codebook is None and self.units_per_second is None:  # WavLM + a released codebook, λ given
            from .pipeline import UnitEncoder

            return UnitEncoder.from_pretrained(self.k, self.lmbda, device, self.num_neighbors)
        return FeatureUnits.load(self, device)

    def write(self, outputs: dict[str, Path], encoded) -> None:
        from .checkpoints import write_atomically
        from .datasets import save_units

        if "npy" in outputs:  # [N, 2]: unit, duration in 50 Hz frames
            save_units(outputs["npy"], encoded.units, encoded.durations)
        if "txt" in outputs:
            write_atomically(outputs["txt"], lambda tmp: tmp.write_text(units_text(encoded.units) + "\n"))

    def run(self) -> TreeResult:
        """Find λ for ``units_per_second`` if this folder has none yet, encode every file not yet done, and
        (on rank 0, with ``npy`` outputs) measure the bitrate of every file's units."""
        if self.lmbda is None:
            plan = replace(self, lmbda=_lambda_for_files(self))
        else:
            plan = self
            if self.units_per_second is not None:
                log.info("λ = %.6g, found for %g units/s by the first run into %s", self.lmbda, self.units_per_second,
                         self.tree.out_dir)  # fmt: skip
        result = _encode(plan)
        if not result.is_main or "npy" not in plan.formats:
            return result
        from .datasets import load_frame_units
        from .quantize import bitrate

        skipped = set(result.failed)
        frame_units = [load_frame_units(plan.tree.outputs(f, ["npy"])["npy"]) for f in plan.tree.files if f not in skipped]
        frame_units = [units for units in frame_units if len(units)]
        return replace(result, bitrate=bitrate(frame_units) if frame_units else None)


@dataclass(frozen=True)
class FeatureUnits:
    """Units of features by name (:func:`~dpslm_utils.feature_encoder`): DPDP of ``encoder(wav, sr)`` on ``codebook``."""

    encoder: Any
    codebook: Tensor
    lmbda: float | None
    num_neighbors: int | None

    @classmethod
    def load(cls, plan: UnitsPlan, device) -> FeatureUnits:
        from .codebooks import load_codebook
        from .features import feature_encoder

        encoder = feature_encoder(plan.features, device=device)
        codebook = plan.codebook if plan.codebook is not None else load_codebook(plan.k, device=device)
        if codebook.shape[1] != encoder.dim:
            raise ValueError(f"the codebook has entries of dimension {codebook.shape[1]}, but these {plan.features} "
                             f"features have {encoder.dim}")
        return cls(encoder, codebook.to(device), plan.lmbda, plan.num_neighbors)

    @property
    def random_weights(self) -> bool:
        return self.encoder.random_weights

    def encode(self, wav: Tensor, sample_rate: int):
        from .pipeline import EncodedSpeech
        from .quantize import deduplicate, dpdp

        features = self.encoder(wav, sample_rate).to(self.codebook.device)
        frame_units = dpdp(features, self.codebook, self.lmbda, self.num_neighbors).cpu()
        return EncodedSpeech(*deduplicate(frame_units), frame_units, self.encoder.frame_rate)


def _lambda_for_files(plan: UnitsPlan) -> float:
    """The λ that gives ``plan.units_per_second`` over the features of every readable file (in one process)."""
    from .pipeline import resolve_device
    from .rates import lambda_for_rate

    model = FeatureUnits.load(plan, resolve_device(plan.device))
    encode = lambda wav, sample_rate: model.encoder(wav, sample_rate).to(model.codebook.device)  # noqa: E731
    features = [x for _, x in each_audio(plan.tree.files, encode, [], desc="features (to find λ)", progress=plan.progress,
                                         report=False)]  # the encoding pass reports them
    if not features:
        raise ValueError(f"no file under {plan.tree.in_dir} could be read, so there is no λ to find")
    lmbda = lambda_for_rate(features, model.codebook, plan.units_per_second, plan.num_neighbors)
    log.info("λ = %.6g gives %g units/s (± 1 %%) over %d files", lmbda, plan.units_per_second, len(features))
    return lmbda


def read_feature_codebook(path: str | os.PathLike, features: str) -> tuple[Tensor, str]:
    """The codebook ``[k, D]`` in the file ``path`` and its ``"sha256:..."``; ValueError (CheckpointError) unless
    it is a codebook file of ``features`` computed with the settings :func:`~dpslm_utils.feature_encoder` uses."""
    from .checkpoints import sha256_of, using_random_weights
    from .codebooks import read_codebook
    from .features import feature_encoder

    codebook, details = read_codebook(check_file(path, "codebook file"))
    recorded = details.get("features")
    if isinstance(recorded, dict) and recorded.get("features") != features:
        raise ValueError(f"{path} is a codebook of {recorded.get('features')} features, not {features}: "
                         f"pass --features {recorded.get('features')}")
    if features == "wavlm":  # what feature_encoder("wavlm").settings will be, without loading WavLM
        expected = {"features": "wavlm", "layer": 11, "random_weights": using_random_weights()}
    else:
        encoder = feature_encoder(features)  # weight-free: nothing to load
        if codebook.shape[1] != encoder.dim:
            raise ValueError(f"{path} has entries of dimension {codebook.shape[1]}, but {features} features have {encoder.dim}")
        expected = encoder.settings
    if isinstance(recorded, dict) and recorded != expected:
        raise ValueError(f"{path} clusters {features} features with other settings ({recorded}); "
                         f"dpslm encode computes {expected}")
    return codebook, f"sha256:{sha256_of(Path(path))}"


def recorded_lambda(out_dir: str | os.PathLike, units_per_second: float) -> float | None:
    """The λ an earlier run into ``out_dir`` found for ``units_per_second`` (None if none did)."""
    from .settings_record import RECORD_NAME

    try:
        record = json.loads((Path(out_dir) / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and record.get("units_per_second") == units_per_second:
        return record.get("lmbda")
    return None


def plan_units(in_dir: str | os.PathLike, out_dir: str | os.PathLike, *, k: int | None = None, lmbda: float | None = None,
               units_per_second: float | None = None, features: str = "wavlm", codebook: str | os.PathLike | None = None,
               num_neighbors: int | None = None, formats: Sequence[str] = UNIT_FORMATS, device: str | None = None,
               progress: bool = True) -> UnitsPlan:  # fmt: skip
    """Check the arguments of :func:`encode_tree`, the folders and the settings recorded in ``out_dir``;
    create ``out_dir``. Loads no model. Raises ValueError/TypeError/OSError (SettingsMismatch: other settings)."""
    if features not in FEATURE_NAMES:
        raise ValueError(f"unknown features {features!r}; the known features are {', '.join(map(repr, FEATURE_NAMES))}")
    if codebook is None and features != "wavlm":
        raise ValueError(f"features={features!r} needs a codebook of {features} features (train_codebook, save_codebook)")
    if codebook is not None and k is not None:
        raise ValueError("give k or codebook, not both: a codebook file sets k")
    if lmbda is not None and units_per_second is not None:
        raise ValueError("give lmbda or units_per_second, not both")
    codebook_tensor, sha256 = read_feature_codebook(codebook, features) if codebook is not None else (None, None)
    k = len(codebook_tensor) if codebook_tensor is not None else registry.DEFAULT_K if k is None else k
    if codebook is None and k not in registry.CODEBOOK_SIZES:
        raise ValueError(f"k={k}: no released codebook; valid k are {list(registry.CODEBOOK_SIZES)}")
    if units_per_second is None:
        lmbda = check_real("lmbda", registry.DEFAULT_LMBDA if lmbda is None else lmbda, minimum=0.0)
    elif check_real("units_per_second", units_per_second, minimum=0.0) == 0:
        raise ValueError("units_per_second must be > 0: every file has at least one unit")
    if num_neighbors is not None:
        check_int("num_neighbors", num_neighbors, 1, k)
    if not formats or not set(formats) <= set(UNIT_FORMATS) or isinstance(formats, str):
        raise ValueError(f"formats must be one or both of {UNIT_FORMATS}, got {formats!r}")
    tree = find_tree(in_dir, out_dir)
    if units_per_second is not None:
        units_per_second = float(units_per_second)
        lmbda = recorded_lambda(tree.out_dir, units_per_second)
        if lmbda is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("units_per_second: λ is found in one process over all files: run once without torchrun, "
                             "then resume under torchrun (the folder keeps the λ it found)")
    plan = UnitsPlan(tree, k, lmbda, units_per_second, features, codebook_tensor, sha256, num_neighbors, tuple(formats),
                     device, progress)  # fmt: skip
    return _checked_record(plan)


def encode_tree(in_dir: str | os.PathLike, out_dir: str | os.PathLike, *, k: int | None = None, lmbda: float | None = None,
                units_per_second: float | None = None, features: str = "wavlm", codebook: str | os.PathLike | None = None,
                num_neighbors: int | None = None, formats: Sequence[str] = UNIT_FORMATS, device: str | None = None,
                progress: bool = True) -> TreeResult:  # fmt: skip
    """DPDP units of every audio file under ``in_dir``, written under ``out_dir`` (``dpslm encode``; see the module).

    ``k``, ``lmbda``: a released WavLM codebook (default 500) and the duration penalty (default 4500), or
    ``units_per_second``: the λ that gives this rate over all the files, found by a first run (which holds every
    file's features in memory) and kept by the folder. ``features`` ("wavlm", "mfcc", "fbank") with ``codebook``,
    a codebook file of those features (:func:`~dpslm_utils.save_codebook`; it sets k). ``num_neighbors``: the
    restricted search. ``formats``: ``"txt"`` and/or ``"npy"``. Returns a :class:`TreeResult`.
    """
    return plan_units(in_dir, out_dir, k=k, lmbda=lmbda, units_per_second=units_per_second, features=features,
                      codebook=codebook, num_neighbors=num_neighbors, formats=formats, device=device,
                      progress=progress).run()  # fmt: skip


# -- codec codes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodesPlan:
    """WavTokenizer codes (int16 ``.npy``) of every file of ``tree``, checked (:func:`plan_codes`)."""

    tree: Tree
    codec: str
    device: str | None = None
    progress: bool = True

    command: ClassVar[str] = "encode-codec"
    formats: ClassVar[tuple[str, ...]] = ("npy",)

    @property
    def settings(self) -> dict:
        from .checkpoints import weights_mode

        return {"codec": self.codec, "weights": weights_mode()}

    def load(self, device):
        from .wavtokenizer import WavTokenizer

        return WavTokenizer.from_pretrained(self.codec, device=device)

    def write(self, outputs: dict[str, Path], codes: Tensor) -> None:
        import numpy as np

        from .datasets import save_array

        save_array(outputs["npy"], codes.cpu().numpy().astype(np.int16))  # 4096 codes fit in int16

    def run(self) -> TreeResult:
        return _encode(self)


def plan_codes(in_dir: str | os.PathLike, out_dir: str | os.PathLike, *, codec: str = CODEC, device: str | None = None,
               progress: bool = True) -> CodesPlan:  # fmt: skip
    """Check the arguments of :func:`encode_codec_tree`, the folders and ``out_dir``'s record; create ``out_dir``."""
    if codec not in registry.WAVTOKENIZER_FILES:
        raise ValueError(f"unknown codec {codec!r}; the codecs are {', '.join(map(repr, registry.WAVTOKENIZER_FILES))}")
    return _checked_record(CodesPlan(find_tree(in_dir, out_dir), codec, device, progress))


def encode_codec_tree(in_dir: str | os.PathLike, out_dir: str | os.PathLike, *, codec: str = CODEC,
                      device: str | None = None, progress: bool = True) -> TreeResult:  # fmt: skip
    """The WavTokenizer ``codec``'s codes of every audio file under ``in_dir``, as int16 ``.npy`` under ``out_dir``
    (``dpslm encode-codec``: what ``train_ellav`` reads beside the units)."""
    return plan_codes(in_dir, out_dir, codec=codec, device=device, progress=progress).run()


# -- a codebook of the features of every file -------------------------------------------------------


@dataclass(frozen=True)
class FolderCodebook:
    """k-means of the features of every readable audio file under a folder (:func:`codebook_of_folder`)."""

    codebook: Tensor
    """``[k, D]``."""
    features: dict
    """The encoder's ``settings``: what the codebook clusters."""
    details: dict
    """What it was trained on and how: ``k``, ``seed``, ``iterations``, ``frames``, ``files``."""
    failed: tuple[Path, ...]
    """Files that could not be read (left out)."""

    def save(self, path: str | os.PathLike) -> None:
        """:func:`~dpslm_utils.save_codebook`: ``{"codebook": [k, D], "features": ..., **details}``, atomically."""
        from .codebooks import save_codebook

        save_codebook(path, self.codebook, self.features, **self.details)


def codebook_of_folder(audio_dir: str | os.PathLike, encoder, k: int, *, iterations: int = 100, seed: int = 0,
                       progress: bool = True) -> FolderCodebook:  # fmt: skip
    """:func:`~dpslm_utils.train_codebook` (k-means++, then Lloyd) of the ``encoder`` features
    (:func:`~dpslm_utils.feature_encoder`) of every audio file under ``audio_dir``: what ``dpslm train-codebook``
    writes. A file that cannot be read is logged, skipped and listed; ValueError if none can, or k > frames."""
    import torch

    from .codebooks import train_codebook

    files, failed = audio_files(audio_dir), []
    features = [x for _, x in each_audio(files, encoder, failed, desc=f"{encoder.name} features", progress=progress)]
    if not features:
        raise ValueError(f"none of the {len(files)} audio files under {audio_dir} could be read")
    frames = torch.cat(features)
    codebook = train_codebook(frames, k, iterations=iterations, seed=seed)
    details = {"k": k, "seed": seed, "iterations": iterations, "frames": frames.shape[0], "files": len(features)}
    return FolderCodebook(codebook, encoder.settings, details, tuple(failed))


# -- the run ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeResult:
    """What a run did: the plan that ran (with the λ it found), and the files that failed."""

    plan: UnitsPlan | CodesPlan
    failed: tuple[Path, ...]
    """Files that could not be encoded, of every process (rank 0's order first under torchrun)."""
    is_main: bool
    """True in the process that reports: rank 0 under torchrun, and a process on its own."""
    bitrate: Bitrate | None = None
    """Units with ``npy`` outputs, rank 0: rate and entropy of the units of every file in OUT_DIR."""
    random_weights: bool = False
    """The model had random weights (``DPSLM_WEIGHTS=random-tiny``): the outputs carry no meaning."""

    @property
    def encoded(self) -> int:
        """Files of the tree with outputs in OUT_DIR (from this run or an earlier one)."""
        return len(self.plan.tree.files) - len(self.failed)


def _encode(plan: UnitsPlan | CodesPlan) -> TreeResult:
    """The run every plan shares: shard, skip what is done, load, record the settings, encode and write each file."""
    from . import distributed
    from .checkpoints import RANDOM_WEIGHTS_MESSAGE, using_random_weights
    from .settings_record import check_settings

    dist = distributed.setup(plan.device)
    tree = plan.tree
    mine = shard(tree.files, dist.rank, dist.world_size)
    todo = [f for f in mine if not tree.done(f, plan.formats)]
    log.info("%s%d audio files under %s: %d for this process, %d already encoded, %d to do", dist.prefix,
             len(tree.files), tree.in_dir, len(mine), len(mine) - len(todo), len(todo))  # fmt: skip

    model = plan.load(dist.device)
    check_settings(tree.out_dir, plan.command, plan.settings, write=dist.is_main)  # recorded once the settings proved loadable
    random_weights = using_random_weights() and getattr(model, "random_weights", True)
    if random_weights:
        log.info("NOTE: %s", RANDOM_WEIGHTS_MESSAGE)
    failed: list[Path] = []
    desc = f"{plan.command} (rank {dist.rank})" if dist.enabled else plan.command
    for path, result in each_audio(todo, model.encode, failed, desc=desc, progress=plan.progress):
        plan.write(tree.outputs(path, plan.formats), result)
    failed = distributed.gather_lists(dist, failed)
    distributed.barrier(dist)
    distributed.teardown(dist)
    return TreeResult(plan, tuple(failed), dist.is_main, random_weights=random_weights)
