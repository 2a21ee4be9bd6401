"""Command line: ``python -m dpslm_utils COMMAND ...`` (also the ``dpslm`` script).

Commands: demo, encode, encode-codec, train-codebook, train-ulm, train-ellav, resynthesize, score, say, wer,
zerospeech, abx, download. ``encode``, ``encode-codec``, ``train-ulm`` and ``train-ellav`` scale past
one GPU by running the same command under ``torchrun --nproc-per-node N -m dpslm_utils ...``: for
encoding every rank takes every N-th file; training uses DDP (see :mod:`dpslm_utils.training`).

Every command checks its arguments, input files and output folder before it loads a model, and
reports errors in one line (``dpslm: error: ...``), without a traceback. Exit status: 0 done;
1 the work ran but something failed (a download, a file that could not be processed); 2 the command
was refused before any work (bad arguments, missing or unreadable inputs, an unwritable output).
torch, numpy and soundfile are imported inside the commands, so such refusals take a fraction of a second.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from . import registry
from .checks import (AUDIO_SUFFIXES, MissingDependency, audio_format, check_count, check_file, check_installed, check_int,
                     check_real, check_sampling, check_seed)  # fmt: skip

TORCH_PARSED_COMMANDS = frozenset({"train-ulm", "train-ellav", "zerospeech", "abx", "download"})
FEATURE_NAMES = ("wavlm", "mfcc", "fbank")
"""The names of :func:`dpslm_utils.feature_encoder` (listed here so that parsing needs no torch import)."""
SILENCE_PEAK = 1e-4
"""Input whose peak amplitude stays below this (-80 dBFS) is silent: there is nothing to resynthesize."""


class UsageError(Exception):
    """The command is refused before any work (exit status 2)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (raised as UsageError) instead of its usage block and exit."""

    def error(self, message: str):
        raise UsageError(f"{message} (see: {self.prog} --help)")


# -- helpers shared by the commands ---------------------------------------------------------------


def find_audio(in_dir: Path) -> list[Path]:
    """Every audio file under ``in_dir``, sorted (so all ranks agree on the order)."""
    return sorted(p for p in in_dir.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """The items rank ``rank`` of ``world_size`` processes handles: every world_size-th, from ``rank``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    return list(items[rank::world_size])


def check_folder(folder: str | os.PathLike) -> None:
    """Raise UsageError unless ``folder`` is an existing folder (an input)."""
    if not Path(folder).is_dir():
        raise UsageError(f"{folder} is not a folder" if Path(folder).exists() else f"{folder} does not exist")


def check_creatable(out_dir: Path) -> None:
    """Raise UsageError if ``out_dir`` is (or lies under) something that is not a folder. Creates nothing."""
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise UsageError(f"cannot use {out_dir} as output folder: {folder} is not a folder")
            return


def check_can_create(out_dir: Path) -> None:
    """Raise UsageError unless ``out_dir`` is, or can be made, a folder to write in. Leaves nothing behind,
    so a refusal after it leaves no empty output folder: the test folder it makes is removed at once."""
    check_creatable(out_dir)
    existing = next(folder for folder in (out_dir, *out_dir.parents) if folder.exists())
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as e:
        where = "" if existing == out_dir else f" (in {existing})"
        raise UsageError(f"cannot write to {out_dir}: {e.strerror or e}{where}") from e


def check_writable(out_dir: Path) -> None:
    """Create ``out_dir`` and try a file in it; UsageError if that fails. Call it after every other check."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as e:
        raise UsageError(f"cannot write to {out_dir}: {e.strerror or e}") from e


def check_input_audio(path: str) -> tuple:
    """Read a mono input (``[1, samples]``, sample rate) and check it is usable speech; UsageError if not."""
    from .audio import check_sample_rate
    from .wavlm import MAX_SECONDS

    try:
        wav, sr = _read_mono(check_file(path, "audio file"))
        sr = check_sample_rate(sr)
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(str(e)) from e
    if wav.shape[-1] / sr > MAX_SECONDS:
        raise UsageError(f"{path} is {wav.shape[-1] / sr:.1f} s long; WavLM takes at most {MAX_SECONDS:g} s (split it)")
    if wav.abs().max() < SILENCE_PEAK:
        raise UsageError(f"{path} is silent (peak amplitude below {SILENCE_PEAK:g}): there is no speech in it")
    return wav, sr


def check_device(device: str | None) -> None:
    """Raise UsageError unless ``--device`` is one the package runs on (cpu, cuda, cuda:N of a present GPU)."""
    from . import checks

    try:
        checks.check_device(device, "--device")
    except ValueError as e:
        raise UsageError(str(e)) from e


def units_text(units) -> str:
    """Deduplicated units as the text the originals use: ``"u12 u7 u300"``."""
    return " ".join(f"u{u}" for u in units.tolist())


def save_audio(path: Path, wav, sample_rate: int) -> None:
    """Write audio in the format its suffix names (``check_say`` and the fixed ``.wav`` names ensure one)."""
    from .audio import save_audio as save  # torch is loaded by then: the command made the waveform

    save(path, wav, sample_rate)


def write_speech(path: Path, wav, sample_rate: int, what: str) -> bool:
    """:func:`save_audio` a rendition and print its path; one without samples is reported instead. True if written."""
    if wav.numel() == 0:  # ELLA-V closed every unit without a codec token: nothing to write
        print(f"{what} is empty (ELLA-V produced no codec tokens); {path} was not written", file=sys.stderr)
        return False
    save_audio(path, wav, sample_rate)
    print(f"{path} ({wav.numel() / sample_rate:.2f} s at {sample_rate} Hz)")
    return True


def _read_mono(path: Path) -> tuple:
    from .audio import load_mono  # here: torch is imported only by a command that reads audio

    return load_mono(path)


def _say_if_random(model=None) -> None:
    """Print the random-weights note in random-tiny mode, unless ``model`` says it has no random weights."""
    from .checkpoints import RANDOM_WEIGHTS_MESSAGE, using_random_weights

    if using_random_weights() and getattr(model, "random_weights", True):
        print(f"NOTE: {RANDOM_WEIGHTS_MESSAGE}")


# -- encode ---------------------------------------------------------------------------------------


def _outputs(audio: Path, in_dir: Path, out_dir: Path, formats: list[str]) -> dict[str, Path]:
    base = out_dir / audio.relative_to(in_dir).with_suffix("")
    return {fmt: base.with_name(base.name + f".{fmt}") for fmt in formats}


def _write_units(outputs: dict[str, Path], units, durations) -> None:
    from .checkpoints import write_atomically
    from .datasets import save_units

    if "npy" in outputs:  # [N, 2]: unit, duration in 50 Hz frames
        save_units(outputs["npy"], units, durations)
    if "txt" in outputs:
        write_atomically(outputs["txt"], lambda tmp: tmp.write_text(units_text(units) + "\n"))


def _read_frame_units(outputs: dict[str, Path]):
    if "npy" not in outputs:
        return None
    from .datasets import load_frame_units

    return load_frame_units(outputs["npy"])


def _encode_tree(args: argparse.Namespace, command: str, settings: dict, formats: list[str], load, encode, write):
    """Shared driver of ``encode`` and ``encode-codec``: every audio file under IN_DIR -> files under OUT_DIR.

    Resumable (files whose outputs exist are skipped), refuses an OUT_DIR made with other settings,
    reports unreadable files and goes on, shards the files across torchrun ranks. ``load()`` builds the
    model once, ``encode(model, wav, sr)`` encodes one file, ``write(outputs, result)`` saves it.
    Returns ``(all files, failed files, dist)``. :func:`check_encode_tree` has checked the arguments.
    """
    from tqdm.auto import tqdm

    from . import distributed
    from .settings_record import check_settings

    dist = distributed.setup(args.device)
    in_dir, out_dir, files = Path(args.in_dir), Path(args.out_dir), args.files
    mine = shard(files, dist.rank, dist.world_size)
    todo = [f for f in mine if not all(p.exists() for p in _outputs(f, in_dir, out_dir, formats).values())]
    print(f"{dist.prefix}{len(files)} audio files under {in_dir}: {len(mine)} for this process, "
          f"{len(mine) - len(todo)} already encoded, {len(todo)} to do")

    model = load(dist.device)
    check_settings(out_dir, command, settings, write=dist.is_main)  # recorded once the settings proved loadable
    _say_if_random(model)
    failed = []
    for path in tqdm(todo, desc=f"{command} (rank {dist.rank})" if dist.enabled else command, disable=args.quiet):
        try:
            wav, sr = _read_mono(path)
            result = encode(model, wav, sr)
        except (ValueError, OSError, RuntimeError) as e:  # unreadable, too long, out of memory: skip it
            failed.append(path)
            tqdm.write(f"skipped {path}: {e}", file=sys.stderr)
            continue
        write(_outputs(path, in_dir, out_dir, formats), result)
    failed = distributed.gather_lists(dist, failed)
    distributed.barrier(dist)
    distributed.teardown(dist)
    return files, failed, dist


def _report_failed(failed: list) -> int:
    if failed:
        print(f"{len(failed)} file(s) could not be encoded and were skipped:", *failed, sep="\n  ", file=sys.stderr)
        return 1
    return 0


def check_encode_tree(args: argparse.Namespace, command: str, settings) -> None:
    """The checks of ``encode`` and ``encode-codec``: IN_DIR, its audio files, OUT_DIR and its settings record.

    ``settings()`` gives the settings to record (called only once the cheap checks passed).
    """
    in_dir, out_dir = Path(args.in_dir), Path(args.out_dir)
    check_folder(in_dir)
    args.files = find_audio(in_dir)
    if not args.files:
        raise UsageError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {in_dir}")
    check_unique_stems(args.files, in_dir)
    check_creatable(out_dir)
    from .settings_record import check_settings

    check_settings(out_dir, command, settings(), write=False)  # SettingsMismatch: a refusal
    check_writable(out_dir)


def check_encode(args: argparse.Namespace) -> None:
    if args.features != "wavlm" and args.codebook is None:
        raise UsageError(f"--features {args.features} needs --codebook, a codebook of {args.features} features "
                         f"(make one with: dpslm train-codebook AUDIO_DIR OUT.pt --k K --features {args.features})")
    if args.codebook is not None:
        if args.k is not None:
            raise UsageError("--k and --codebook: the codebook file sets k, give only --codebook")
        args.k = _check_codebook_file(args)
    else:
        args.k = registry.DEFAULT_K if args.k is None else args.k
        if args.k not in registry.CODEBOOK_SIZES:
            raise UsageError(f"--k {args.k}: no released codebook; valid k are {list(registry.CODEBOOK_SIZES)}")
    if args.units_per_second is None:
        args.lmbda = check_real("--lmbda", registry.DEFAULT_LMBDA if args.lmbda is None else args.lmbda, minimum=0.0)
    else:
        args.units_per_second = check_real("--units-per-second", args.units_per_second, minimum=0.0)
        if args.units_per_second == 0:
            raise UsageError("--units-per-second must be > 0: every file has at least one unit")
        args.lmbda = _recorded_lambda(Path(args.out_dir), args.units_per_second)
        if args.lmbda is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError("--units-per-second finds λ in one process over all files: run it once without "
                             "torchrun, then resume under torchrun (the folder keeps the λ it found)")
    if args.num_neighbors is not None:
        check_int("--num-neighbors", args.num_neighbors, 1, args.k)
    check_encode_tree(args, "encode", lambda: _encode_settings(args))


def _check_codebook_file(args: argparse.Namespace) -> int:
    """Read ``--codebook`` and check it fits ``--features``; keep it (``args.codebook_tensor``) and its
    hash (``args.codebook_sha256``). Returns its k."""
    from .checkpoints import CheckpointError, sha256_of, using_random_weights
    from .codebooks import read_codebook
    from .features import feature_encoder

    try:
        codebook, details = read_codebook(check_file(args.codebook, "codebook file"))
    except CheckpointError as e:
        raise UsageError(str(e)) from e
    recorded = details.get("features")
    if isinstance(recorded, dict) and recorded.get("features") != args.features:
        raise UsageError(f"{args.codebook} is a codebook of {recorded.get('features')} features, not {args.features}: "
                         f"pass --features {recorded.get('features')}")
    if args.features == "wavlm":  # what feature_encoder("wavlm").settings will be, without loading WavLM
        expected = {"features": "wavlm", "layer": 11, "random_weights": using_random_weights()}
    else:
        encoder = feature_encoder(args.features)  # weight-free: nothing to load
        if codebook.shape[1] != encoder.dim:
            raise UsageError(f"{args.codebook} has entries of dimension {codebook.shape[1]}, but {args.features} "
                             f"features have {encoder.dim}")
        expected = encoder.settings
    if isinstance(recorded, dict) and recorded != expected:
        raise UsageError(f"{args.codebook} clusters {args.features} features with other settings ({recorded}); "
                         f"dpslm encode computes {expected}")
    args.codebook_tensor, args.codebook_sha256 = codebook, f"sha256:{sha256_of(Path(args.codebook))}"
    return codebook.shape[0]


def _recorded_lambda(out_dir: Path, units_per_second: float) -> float | None:
    """The λ an earlier ``--units-per-second`` run into ``out_dir`` found for this rate (None if none did)."""
    from .settings_record import RECORD_NAME

    try:
        record = json.loads((out_dir / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and record.get("units_per_second") == units_per_second:
        return record.get("lmbda")
    return None


def _encode_settings(args: argparse.Namespace) -> dict:
    from .checkpoints import weights_mode

    settings = {"k": args.k, "lmbda": args.lmbda, "num_neighbors": args.num_neighbors, "weights": weights_mode()}
    if args.codebook is not None:  # today's record, plus what the new options change
        settings |= {"features": args.features, "codebook": args.codebook_sha256}
        if args.features != "wavlm":
            del settings["weights"]
    if args.units_per_second is not None:
        settings["units_per_second"] = args.units_per_second
    return settings


def check_unique_stems(files: list[Path], in_dir: Path) -> None:
    """Outputs are named by the input's path without its audio suffix: refuse inputs that would share one."""
    by_stem: dict[Path, list[Path]] = {}
    for f in files:
        by_stem.setdefault(f.relative_to(in_dir).with_suffix(""), []).append(f.relative_to(in_dir))
    clashes = [" and ".join(map(str, group)) for group in by_stem.values() if len(group) > 1]
    if clashes:
        shown = "; ".join(clashes[:5]) + (f"; ... ({len(clashes)} in all)" if len(clashes) > 5 else "")
        raise UsageError(f"inputs that differ only in their suffix would write the same outputs: {shown}. "
                         "Rename or move one of each")


def cmd_encode(args: argparse.Namespace) -> int:
    from .pipeline import UnitEncoder
    from .quantize import bitrate

    formats = ["txt", "npy"] if args.format == "both" else [args.format]
    if args.codebook is None and args.units_per_second is None:  # WavLM + a released codebook, λ given
        load = lambda device: UnitEncoder.from_pretrained(args.k, args.lmbda, device, args.num_neighbors)  # noqa: E731
        encode = lambda encoder, wav, sr: encoder.encode(wav, sr)  # noqa: E731
    else:
        load, encode = _feature_units(args)
    files, failed, dist = _encode_tree(
        args, "encode", _encode_settings(args), formats, load=load, encode=encode,
        write=lambda outputs, encoded: _write_units(outputs, encoded.units, encoded.durations),
    )  # fmt: skip
    if not dist.is_main:
        return 1 if failed else 0
    skipped = set(failed)
    in_dir, out_dir = Path(args.in_dir), Path(args.out_dir)
    frame_units = [_read_frame_units(_outputs(f, in_dir, out_dir, formats)) for f in files if f not in skipped]
    frame_units = [u for u in frame_units if u is not None and len(u)]
    if frame_units:
        rate = bitrate(frame_units)
        features = "" if args.codebook is None else f"{args.features} features, "
        print(f"encoded {len(frame_units)} files with {features}k={args.k}, lmbda={args.lmbda:g}: "
              f"{rate.units_per_second:.1f} units/s, {rate.entropy_bits:.2f} bits/unit, "
              f"{rate.bits_per_second:.1f} bits/s")
    return _report_failed(failed)


def _feature_units(args: argparse.Namespace) -> tuple:
    """``(load, encode)`` of :func:`_encode_tree` for ``--features``/``--codebook``/``--units-per-second``:
    features of ``--features``, DPDP on ``--codebook`` (or the released one of ``--k``). Without a
    recorded λ, ``--units-per-second`` first encodes every file to find λ (:func:`lambda_for_rate`)."""
    from types import SimpleNamespace

    from .pipeline import EncodedSpeech, resolve_device
    from .quantize import deduplicate, dpdp

    def load(device) -> SimpleNamespace:
        from .codebooks import load_codebook
        from .features import feature_encoder

        encoder = feature_encoder(args.features, device=device)
        codebook = args.codebook_tensor if args.codebook is not None else load_codebook(args.k, device=device)
        if codebook.shape[1] != encoder.dim:
            raise ValueError(f"the codebook has entries of dimension {codebook.shape[1]}, but these {args.features} "
                             f"features have {encoder.dim}")
        return SimpleNamespace(encoder=encoder, codebook=codebook.to(device), random_weights=encoder.random_weights)

    def encode(model, wav, sr) -> EncodedSpeech:
        features = model.encoder(wav, sr).to(model.codebook.device)
        frame_units = dpdp(features, model.codebook, args.lmbda, args.num_neighbors).cpu()
        return EncodedSpeech(*deduplicate(frame_units), frame_units, model.encoder.frame_rate)

    if args.lmbda is None:  # --units-per-second, first run
        model = load(resolve_device(args.device))
        args.lmbda = _lambda_for_files(args, model.encoder, model.codebook)
        return (lambda device: model), encode
    if args.units_per_second is not None:
        print(f"λ = {args.lmbda:.6g}, found for {args.units_per_second:g} units/s by the first run into {args.out_dir}")
    return load, encode


def _lambda_for_files(args: argparse.Namespace, encoder, codebook) -> float:
    """The λ that gives ``--units-per-second`` over the features of every readable input file."""
    from tqdm.auto import tqdm

    from .rates import lambda_for_rate

    features = []
    for path in tqdm(args.files, desc="features (to find λ)", disable=args.quiet):
        try:
            wav, sr = _read_mono(path)
            features.append(encoder(wav, sr).to(codebook.device))
        except (ValueError, OSError, RuntimeError):  # reported by the encoding pass that follows
            continue
    if not features:
        raise ValueError(f"no file under {args.in_dir} could be read, so there is no λ to find")
    lmbda = lambda_for_rate(features, codebook, args.units_per_second, args.num_neighbors)
    print(f"λ = {lmbda:.6g} gives {args.units_per_second:g} units/s (± 1 %) over {len(features)} files")
    return lmbda


def check_encode_codec(args: argparse.Namespace) -> None:
    check_encode_tree(args, "encode-codec", lambda: _codec_settings(args))


def _codec_settings(args: argparse.Namespace) -> dict:
    from .checkpoints import weights_mode

    return {"codec": args.codec, "weights": weights_mode()}


def cmd_encode_codec(args: argparse.Namespace) -> int:
    import numpy as np

    from .datasets import save_array
    from .wavtokenizer import WavTokenizer

    def write(outputs: dict[str, Path], codes) -> None:
        save_array(outputs["npy"], codes.cpu().numpy().astype(np.int16))  # 4096 codes fit in int16

    files, failed, dist = _encode_tree(
        args, "encode-codec", _codec_settings(args), ["npy"],
        load=lambda device: WavTokenizer.from_pretrained(args.codec, device=device),
        encode=lambda codec, wav, sr: codec.encode(wav, sr),
        write=write,
    )  # fmt: skip
    if dist.is_main:
        print(f"{len(files) - len(failed)} of {len(files)} files have {args.codec} codes under {args.out_dir}")
    return _report_failed(failed) if dist.is_main else (1 if failed else 0)


# -- train-codebook -------------------------------------------------------------------------------


def check_train_codebook(args: argparse.Namespace) -> None:
    check_folder(args.audio_dir)
    args.files = find_audio(Path(args.audio_dir))
    if not args.files:
        raise UsageError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {args.audio_dir}")
    check_int("--k", args.k, minimum=1)
    check_int("--iterations", args.iterations, minimum=0)
    check_seed(args.seed)
    out_file = Path(args.out_file)
    if out_file.is_dir():
        raise UsageError(f"{out_file} is a folder; give the path of the codebook file to write")
    if out_file.exists() and not args.overwrite:
        raise UsageError(f"{out_file} exists; pass --overwrite to replace it")
    check_creatable(out_file.parent)
    check_device(args.device)
    check_writable(out_file.parent)


def cmd_train_codebook(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from .codebooks import save_codebook, train_codebook
    from .features import feature_encoder

    encoder = feature_encoder(args.features, device=args.device)
    _say_if_random(encoder)
    features, failed = [], []
    for path in tqdm(args.files, desc=f"{args.features} features", disable=args.quiet):
        try:
            wav, sr = _read_mono(path)
            features.append(encoder(wav, sr))
        except (ValueError, OSError, RuntimeError) as e:  # unreadable, too short or long: skip it
            failed.append(path)
            tqdm.write(f"skipped {path}: {e}", file=sys.stderr)
    if not features:
        raise ValueError(f"none of the {len(args.files)} audio files under {args.audio_dir} could be read")
    frames = torch.cat(features)
    codebook = train_codebook(frames, args.k, iterations=args.iterations, seed=args.seed)  # ValueError: k > frames
    save_codebook(args.out_file, codebook, encoder.settings, k=args.k, seed=args.seed, iterations=args.iterations,
                  frames=frames.shape[0], files=len(features))  # fmt: skip
    print(f"{len(features)} files, {frames.shape[0] / encoder.frame_rate:.1f} s ({frames.shape[0]} frames) -> "
          f"{args.k} centres of {args.features} features (D = {encoder.dim}): {args.out_file}")
    return _report_failed(failed)


# -- train-ulm, train-ellav -----------------------------------------------------------------------


def _training_overrides(args: argparse.Namespace) -> dict:
    from .training import PRESETS

    names = PRESETS["ulm"]["tiny"].keys()
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None and name != "max_steps"}


def _run_trainer(trainer, folders: list[str], args: argparse.Namespace) -> int:
    """Run ``train_ulm`` / ``train_ellav`` on ``folders`` (the data folders, then OUT_DIR) with the command's settings.

    The trainers raise ValueError (settings, an OUT_DIR of other settings or in use, bad data, a state that
    cannot be resumed) only before the first step: refusals. A loss that is not finite stops the
    run with a RuntimeError (exit status 1).
    """
    try:
        run = trainer(*folders, k=args.k, preset=args.preset, val_dir=args.val_dir, device=args.device,
                      max_steps=args.max_steps, overwrite=args.overwrite, progress=not args.quiet,
                      **_training_overrides(args))  # fmt: skip
    except ValueError as e:
        raise UsageError(str(e)) from e
    print(f"checkpoints: {run.best_checkpoint} (best), {run.last_checkpoint} (last)")
    return 0


def check_training(args: argparse.Namespace) -> None:
    check_int("--k", args.k, minimum=1)
    if args.max_steps is not None:
        check_int("--max-steps", args.max_steps, minimum=1)
    for folder in (args.units_dir, getattr(args, "codes_dir", None), args.val_dir):
        if folder is not None:
            check_folder(folder)
    check_creatable(Path(args.out_dir))


def cmd_train_ulm(args: argparse.Namespace) -> int:
    from .training import train_ulm

    return _run_trainer(train_ulm, [args.units_dir, args.out_dir], args)


def cmd_train_ellav(args: argparse.Namespace) -> int:
    from .training import train_ellav

    return _run_trainer(train_ellav, [args.units_dir, args.codes_dir, args.out_dir], args)


# -- resynthesize, score --------------------------------------------------------------------------


def check_resynthesize(args: argparse.Namespace) -> None:
    args.k, args.lmbda = registry.check_combination(args.k, args.lmbda)
    check_count("-n", args.n)
    check_sampling(args.temperature, args.top_p)
    check_seed(args.seed)
    out_folder = Path(args.out_prefix).parent
    check_creatable(out_folder)
    check_file(args.input, "audio file")
    args.wav, args.sr = check_input_audio(args.input)
    check_writable(out_folder)


def cmd_resynthesize(args: argparse.Namespace) -> int:
    from .pipeline import DPSLM

    model = DPSLM.from_pretrained(args.k, args.lmbda, device=args.device)
    _say_if_random()
    outputs = model.resynthesize(args.wav, args.sr, n=args.n, temperature=args.temperature, top_p=args.top_p,
                                 seed=args.seed)
    written = [write_speech(Path(f"{args.out_prefix}_{i}.wav"), out, model.vocoder.sample_rate, f"rendition {i}")
               for i, out in enumerate(outputs)]  # fmt: skip
    return 0 if all(written) else 1


def check_score(args: argparse.Namespace) -> None:
    args.k, args.lmbda = registry.check_combination(args.k, args.lmbda)
    problems = []
    for name in args.files:
        try:
            check_file(name, "audio file")
        except OSError as e:
            problems.append(str(e))
    if problems:
        raise UsageError("; ".join(problems))


def cmd_score(args: argparse.Namespace) -> int:
    from .pipeline import DPSLM

    model = DPSLM.from_pretrained(args.k, args.lmbda, device=args.device)
    _say_if_random()
    failed = 0
    for name in args.files:
        try:
            wav, sr = _read_mono(Path(name))
            print(f"{model.loglikelihood(wav, sr):.4f}\t{name}")
        except (ValueError, OSError, RuntimeError) as e:  # unreadable, too long, out of memory: skip it
            failed += 1
            print(f"skipped {name}: {e}", file=sys.stderr)
    return 1 if failed else 0


# -- say, wer (phone toplines and resynthesis intelligibility) -------------------------------------


def check_say(args: argparse.Namespace) -> None:
    from . import phones

    audio_format(args.out_wav)
    if args.phones:
        sequence = phones.as_phones(args.text)
        unknown = sorted(set(sequence) - set(registry.US_ARPA_PHONES), key=sequence.index)
        if unknown:
            raise UsageError(f"--phones: {', '.join(map(repr, unknown))} not among the phones of the phone ELLA-V: "
                             f"{' '.join(registry.US_ARPA_PHONES)}")
        args.chunks = phones.phone_chunks(sequence, phones.MAX_PHONES_PER_CHUNK)
    else:
        args.chunks = phones.text_to_phone_chunks(args.text, phones.MAX_PHONES_PER_CHUNK)
    check_sampling(args.temperature, args.top_p)
    check_seed(args.seed)
    check_creatable(Path(args.out_wav).parent)


def cmd_say(args: argparse.Namespace) -> int:
    from .phones import MAX_PHONES_PER_CHUNK, PhoneTTS

    tts = PhoneTTS.from_pretrained(device=args.device)
    _say_if_random()
    if len(args.chunks) > 1:
        print(f"{len(args.chunks)} chunks of at most {MAX_PHONES_PER_CHUNK} phones, spoken one after another:")
    print(*(" ".join(chunk) for chunk in args.chunks), sep="\n")
    wav = tts.speak(args.chunks, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    return 0 if write_speech(Path(args.out_wav), wav, tts.sample_rate, "the speech") else 1


def _pairs(text: str) -> list[tuple[int, int]]:
    """``"500:4500,500:0"`` -> ``[(500, 4500), (500, 0)]``, each a released (k, λ)."""
    try:
        pairs = [tuple(float(x) for x in item.split(":")) for item in text.split(",") if item.strip()]
        return [registry.check_combination(int(k), lmbda) for k, lmbda in pairs]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected K:LAMBDA pairs such as 500:4500,500:0 ({e})") from e


def check_wer(args: argparse.Namespace) -> None:
    from .wer import read_transcripts

    if not args.pairs and args.no_references:
        raise UsageError("nothing to measure: give --pairs or drop --no-references")
    check_count("--batch-size", args.batch_size)
    check_sampling(args.temperature, args.top_p)
    check_seed(args.seed)
    check_installed("jiwer", "dpslm wer")
    check_installed("whisper", "dpslm wer (its ASR, OpenAI Whisper)")
    read_transcripts(args.audio_dir, args.limit)
    check_creatable(Path(args.out_dir))


def cmd_wer(args: argparse.Namespace) -> int:
    from . import wer

    asr = wer.whisper_asr(args.asr_model, device=args.device)  # not installed or offline: one-line error
    out_dir = Path(args.out_dir)
    check_writable(out_dir)
    rows = wer.resynthesis_wer(
        args.audio_dir, args.pairs, asr=asr, limit=args.limit, references=not args.no_references,
        exact_search=args.exact_search, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
        batch_size=args.batch_size, device=args.device, save_audio=out_dir / "audio" if args.save_audio else None,
        results_dir=out_dir / "systems",
    )  # fmt: skip
    print(f"\n{'system':>16} {'bits/s':>8} {'units/s':>8} {'WER %':>7} {'median %':>8}")
    for row in rows:
        name = row["system"] if row["k"] is None else f"k={row['k']} λ={row['lmbda']:g}"
        bits = "" if row["bits_per_second"] is None else f"{row['bits_per_second']:.1f}"
        units = "" if row["units_per_second"] is None else f"{row['units_per_second']:.1f}"
        print(f"{name:>16} {bits:>8} {units:>8} {100 * row['wer']:>7.2f} {100 * row['median_wer']:>8.2f}")
    print("WER %: pooled over the utterances; median %: the median of their own WERs (the paper's Figure 4)")
    csv_path, json_path = wer.write_results(rows, out_dir)
    print(f"wrote {csv_path} and {json_path}")
    _say_if_random()
    return 0


# -- demo -----------------------------------------------------------------------------------------


def check_demo(args: argparse.Namespace) -> None:
    args.k, args.lmbda = registry.check_combination(args.k, args.lmbda)
    check_seed(args.seed)
    check_creatable(Path(args.out))
    check_writable(Path(args.out))


def cmd_demo(args: argparse.Namespace) -> int:
    from .checkpoints import WEIGHTS_ENV, CheckpointError

    if args.weights != "auto":
        os.environ[WEIGHTS_ENV] = args.weights
    try:
        return _demo(args)
    except CheckpointError as e:
        if args.weights != "auto":
            raise
        print(f"\nThe official checkpoints could not be downloaded:\n{e}\n")
        print("=> Running the demo with RANDOM TINY WEIGHTS instead: every step runs, but the units, "
              "scores and audio are meaningless.\n")
        os.environ[WEIGHTS_ENV] = "random-tiny"
        return _demo(args)


def _demo(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import plots
    from .audio import example_audio
    from .pipeline import DPSLM

    out = Path(args.out)
    model = DPSLM.from_pretrained(args.k, args.lmbda, device=args.device)
    print(model)
    wav, sr = example_audio("librispeech")

    encoded = model.encode(wav, sr)
    seconds = wav.shape[-1] / sr
    print(f"\n{seconds:.2f} s of speech -> {len(encoded.frame_units)} frames -> {len(encoded.units)} units "
          f"({len(encoded.units) / seconds:.1f} units/s) with k={model.k}, lmbda={model.lmbda:g}:")
    print(units_text(encoded.units))
    (out / "units.txt").write_text(units_text(encoded.units) + "\n")

    speech = model.synthesize(encoded.units, n=2, seed=args.seed)
    for i, s in enumerate(speech):
        save_audio(out / f"resynthesis_{i}.wav", s.wav, s.sample_rate)
    save_audio(out / "original.wav", wav, sr)

    word, nonword = (example_audio(name) for name in ("manufacture", "manufelture"))
    scores = {name: model.loglikelihood(*audio) for name, audio in (("manufacture", word), ("manufelture", nonword))}
    print("\nunit-LM log-likelihood (nats):", ", ".join(f"{n}: {v:.2f}" for n, v in scores.items()))

    fig, axes = plt.subplots(3, 1, figsize=(12, 8), constrained_layout=True)
    plots.plot_segmentation(wav, sr, encoded.frame_units, ax=axes[0],
                            title=f"original with DPDP units (k={model.k}, λ={model.lmbda:g})")
    for ax, (i, s) in zip(axes[1:], enumerate(speech)):
        plots.plot_spectrogram(s.wav, s.sample_rate, ax=ax, title=f"resynthesis {i} (ELLA-V + WavTokenizer)")
    plots.mark_random_weights(fig)
    fig.savefig(out / "demo.png", dpi=110)
    plt.close(fig)
    print(f"\nwrote {out}/units.txt, original.wav, resynthesis_0.wav, resynthesis_1.wav and demo.png")
    _say_if_random()
    if model.random_weights:
        print("      units.txt, resynthesis_0.wav, resynthesis_1.wav, demo.png and the log-likelihoods come from these "
              "random models: the resyntheses are noise.")
        _weight_free_demo(out, wav, sr)
    return 0


DEMO_UNITS_PER_SECOND = (20.0, 10.0, 5.0)
"""Rates of the offline demo's weight-free resyntheses: λ found on the example by lambda_for_rate (within 10 %)."""
DEMO_LAMBDAS = (0.0, 100.0, 1000.0, 3000.0, 10000.0)
"""λ of the offline demo's rate-distortion figure (log-mel λ: squared log-mel distance)."""


def _weight_free_demo(out: Path, wav, sr: int) -> None:
    """Units you can hear without any weights: log-mel features, DPDP on the shipped log-mel codebook,
    each frame's centroid back in place, Griffin-Lim. Writes ``weightfree_*.wav`` and ``rate_distortion.png``."""
    import matplotlib.pyplot as plt

    from . import plots
    from .codebooks import feature_codebook
    from .features import feature_encoder, resynthesize_units
    from .quantize import deduplicate, dpdp
    from .rates import lambda_for_rate, rate_distortion

    encoder, codebook = feature_encoder("fbank"), feature_codebook("fbank")
    features = encoder(wav, sr)
    lambdas = [lambda_for_rate(features, codebook, rate, rtol=0.1) for rate in DEMO_UNITS_PER_SECOND]
    points = {p.lmbda: p for p in rate_distortion(features, codebook, sorted({*DEMO_LAMBDAS, *lambdas}))}
    print("\nWEIGHT-FREE resynthesis: no model weights at all (80-band log-mel features, DPDP on the shipped "
          "k=100 log-mel codebook, each frame's centroid put back, Griffin-Lim):")
    save_audio(out / "weightfree_logmel.wav", encoder.invert(features), encoder.sample_rate)
    print("  weightfree_logmel.wav: the log-mel spectrogram itself, inverted without units (Griffin-Lim alone)")
    for lmbda in lambdas:
        units, durations = deduplicate(dpdp(features, codebook, lmbda))
        name = f"weightfree_lambda_{lmbda:.0f}.wav"
        save_audio(out / name, resynthesize_units(units, durations, codebook, encoder), encoder.sample_rate)
        point = points[lmbda]
        print(f"  {name}: λ = {lmbda:.4g}, {point.units_per_second:.1f} units/s, {point.bits_per_second:.0f} bits/s")
    print("  It sounds robotic (no neural vocoder; Griffin-Lim guesses the phase), but it is real: the bigger λ, "
          "the fewer and longer the units and the more the sounds smear.")
    axes = plots.plot_rate_distortion(list(points.values()))
    axes[0].figure.suptitle("weight-free units of the example: log-mel + DPDP, k = 100 (no model weights)")
    axes[0].figure.savefig(out / "rate_distortion.png", dpi=110)
    plt.close(axes[0].figure)
    print(f"  rate_distortion.png: distortion against units/s and bits/s for these λ and {', '.join(f'{x:g}' for x in DEMO_LAMBDAS)}")


# -- evaluate: zerospeech, abx, download -----------------------------------------------------------


def _unit_encoder(args: argparse.Namespace):
    from .pipeline import UnitEncoder

    return UnitEncoder.from_pretrained(args.k, args.lmbda, args.device, args.num_neighbors)


def _encoding_settings(args: argparse.Namespace) -> dict:
    from .checkpoints import using_random_weights

    return {"k": args.k, "lmbda": args.lmbda, "num_neighbors": args.num_neighbors, "random_weights": using_random_weights()}


def _resolve_search(args: argparse.Namespace) -> None:
    """``--num-neighbors N``, ``--exact-search``, or (default) the paper's restricted search ``PAPER_NUM_NEIGHBORS[k]``."""
    if args.k not in registry.CODEBOOK_SIZES:
        raise UsageError(f"--k {args.k}: no released codebook; valid k are {list(registry.CODEBOOK_SIZES)}")
    if args.exact_search and args.num_neighbors is not None:
        raise UsageError("give --exact-search or --num-neighbors, not both")
    if args.num_neighbors is not None:
        check_int("--num-neighbors", args.num_neighbors, 1, args.k)
    elif not args.exact_search:
        args.num_neighbors = registry.PAPER_NUM_NEIGHBORS[args.k]


def check_zerospeech(args: argparse.Namespace) -> None:
    from .evaluation import check_zerospeech_dataset

    check_folder(args.dataset_dir)
    if args.ulm:
        check_file(args.ulm, "unit-LM checkpoint")
    else:
        try:
            registry.check_combination(args.k, args.lmbda)
        except ValueError as e:
            raise UsageError(f"{e} (or pass --ulm PATH for a unit LM of your own)") from e
    check_count("--batch-size", args.batch_size)
    check_zerospeech_dataset(args.dataset_dir, args.splits)  # layout, gold.csv, audio: before hours of encoding
    # evaluate_zerospeech records the encoder's full identity (its weights too); compare what is known before loading it
    check_evaluation_output(args, "zerospeech", partial=True)


def check_abx(args: argparse.Namespace) -> None:
    from .evaluation import check_abx_triplets, check_distinct_stems, read_item_file

    check_installed("zrc_abx2", "dpslm abx")
    item_file = check_file(args.item_file, "item file")
    tokens = read_item_file(item_file)
    check_folder(args.audio_dir)
    named = {token.file for token in tokens}
    args.files = [f for f in find_audio(Path(args.audio_dir)) if f.stem in named]
    if not args.files:
        raise UsageError(f"no audio file under {args.audio_dir} is named in {item_file} "
                         f"(it names files like {sorted(named)[:2]})")
    missing = sorted(named - {f.stem for f in args.files})
    if missing:
        raise UsageError(f"{len(missing)} of the {len(named)} files that {item_file} names are not under "
                         f"{args.audio_dir}, e.g. {missing[:3]}")
    check_distinct_stems(args.files)  # features are named by the file's stem
    check_abx_triplets(item_file, tokens, args.speaker_modes, args.context)
    check_evaluation_output(args, "abx")


def check_evaluation_output(args: argparse.Namespace, command: str, partial: bool = False) -> None:
    """The search and OUT_DIR of ``zerospeech``/``abx``: writable (nothing is created yet), and its
    settings record (cached units/features fit only their settings)."""
    _resolve_search(args)
    check_can_create(Path(args.out_dir))
    from .settings_record import check_settings

    settings = _encoding_settings(args)
    check_settings(args.out_dir, command, settings, write=False, partial=partial)  # SettingsMismatch: a refusal


def cmd_zerospeech(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_zerospeech, results_table
    from .settings_record import SettingsMismatch
    from .ulm import UnitLM

    out_dir = Path(args.out_dir)
    if args.ulm:
        ulm = UnitLM.from_checkpoint(args.ulm, device=args.device)
        if ulm.k != args.k:
            raise UsageError(f"{args.ulm} is a unit LM for k={ulm.k}, but --k is {args.k}")
    else:
        ulm = UnitLM.from_pretrained(args.k, args.lmbda, hours=args.hours, device=args.device)
    encoder = _unit_encoder(args)
    _say_if_random()
    try:
        results = evaluate_zerospeech(args.dataset_dir, out_dir, encoder=encoder, ulm=ulm, splits=args.splits,
                                      reduction=args.reduction, batch_size=args.batch_size, progress=not args.quiet)
    except SettingsMismatch as e:  # the same k, λ and search, but other weights: refused before any work
        raise UsageError(str(e)) from e
    print(results_table(results))
    print(f"wrote the submission files under {out_dir}/lexical and {out_dir}/syntactic, metrics in {out_dir}/results.json")
    _say_if_random()
    return 0


def cmd_abx(args: argparse.Namespace) -> int:
    from .checkpoints import write_atomically
    from .evaluation import abx_error_rates, abx_representations
    from .settings_record import check_settings

    item_file, out_dir, files = Path(args.item_file), Path(args.out_dir), args.files
    encoder = _unit_encoder(args)
    check_settings(out_dir, "abx", _encoding_settings(args))  # recorded once the settings proved loadable
    _say_if_random()
    folders = abx_representations(files, encoder, out_dir=out_dir / "features", progress=not args.quiet)
    rates = abx_error_rates(item_file, {name: folders[name] for name in args.representations},
                            frame_rate=encoder.encoder.frame_rate, distance=args.distance, speaker_modes=args.speaker_modes,
                            context_mode=args.context, cuda=str(encoder.encoder.device).startswith("cuda"))
    write_atomically(out_dir / "abx.json", lambda tmp: tmp.write_text(json.dumps(rates, indent=1) + "\n"))
    search = "exact search" if args.num_neighbors is None else f"{args.num_neighbors} nearest codes"
    print(f"ABX error rate (%), {args.context} context, k={args.k}, lmbda={args.lmbda:g} ({search}), {len(files)} files")
    print(f"{'representation':<15} {'within':>7} {'across':>7}")
    for name, rate in rates.items():
        print(f"{name:<15} {rate.get('within', float('nan')):>7.2f} {rate.get('across', float('nan')):>7.2f}")
    print(f"wrote {out_dir}/abx.json")
    _say_if_random()
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .corpora import data_dir, download_corpus

    folder = Path(args.dir) if args.dir else data_dir()
    archive = download_corpus(args.corpus, folder, extract=not args.no_extract, progress=not args.quiet)  # DownloadError: exit 1
    print(f"{args.corpus}: {archive}" + ("" if args.no_extract else f" (unpacked into {folder})"))
    return 0


# -- argument parsing -----------------------------------------------------------------------------


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, default=registry.DEFAULT_K, help="codebook size (default 500)")
    p.add_argument("--lmbda", type=float, default=registry.DEFAULT_LMBDA, help="DPDP duration penalty λ (default 4500)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def _add_training_args(p: argparse.ArgumentParser, settings_options: bool) -> None:

    p.add_argument("--k", type=int, required=True, help="codebook size of the units")
    p.add_argument("--preset", choices=["tiny", "released"], default="tiny",
                   help="tiny: small model for a CPU; released: the original configuration")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available; under torchrun each rank its GPU)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    p.add_argument("--val-dir", default=None, help="validation units (default: hold out 2%% of the files)")
    p.add_argument("--overwrite", action="store_true", help="start over, deleting the run in OUT_DIR (else: resume it, or refuse other settings)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    if not settings_options:
        return
    from .training import PRESETS  # imports torch: see build_parser

    settings = p.add_argument_group("settings (default: the preset's)")
    for name, value in PRESETS["ulm"]["tiny"].items():
        if name != "max_steps":
            settings.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None, metavar=type(value).__name__.upper())


def _add_search_args(p: argparse.ArgumentParser) -> None:
    """The DPDP search of ``zerospeech`` and ``abx``: by default the paper's, as in ``wer``."""
    p.add_argument("--exact-search", action="store_true",
                   help="exact DPDP over all k codes. Default: the paper's search, each frame limited to its 5%% nearest "
                        "codes (PAPER_NUM_NEIGHBORS[k]), as for the released models' training units")
    p.add_argument("--num-neighbors", type=int, default=None, help="restrict each frame to its N nearest codes "
                   "(default: the paper's 5%% of k)")


def build_parser(all_options: bool = True) -> argparse.ArgumentParser:
    """The ``dpslm`` parser. ``all_options=False`` leaves out what comes with the torch import: the
    per-setting options of the training commands (``--lr``, ...) and the evaluation commands. :func:`main`
    does so unless one of :data:`TORCH_PARSED_COMMANDS` is asked for, so that other commands check their
    arguments in a fraction of a second."""
    parser = ArgumentParser(prog="dpslm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="encode, resynthesize and score the bundled example")
    _add_model_args(p)
    p.add_argument("--out", default="outputs/demo", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", choices=["auto", "pretrained", "random-tiny"], default="auto",
                   help="auto: the official checkpoints, or random tiny weights when they cannot be downloaded")
    p.set_defaults(run=cmd_demo, check=check_demo)

    p = sub.add_parser("encode", help="every audio file under IN_DIR -> DPDP units under OUT_DIR (resumable)")
    p.add_argument("in_dir")
    p.add_argument("out_dir")
    p.add_argument("--k", type=int, default=None, help="released codebook size (default 500; not with --codebook)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--lmbda", type=float, default=None, help="DPDP duration penalty λ (default 4500)")
    rate.add_argument("--units-per-second", type=float, default=None,
                      help="instead of --lmbda: the λ that gives this many units per second over all the files")
    p.add_argument("--features", choices=FEATURE_NAMES, default="wavlm",
                   help="wavlm (layer 11, default), or weight-free mfcc / fbank (these need --codebook)")
    p.add_argument("--codebook", default=None, help="a codebook file of these features (dpslm train-codebook)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--num-neighbors", type=int, default=None, help="restrict each frame to its N nearest codes")
    p.add_argument("--format", choices=["txt", "npy", "both"], default="both",
                   help="txt: 'u12 u7 ...'; npy: int64 [N, 2] of (unit, duration in 50 Hz frames)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_encode, check=check_encode)

    p = sub.add_parser("encode-codec", help="every audio file under IN_DIR -> WavTokenizer codes (.npy) under OUT_DIR")
    p.add_argument("in_dir")
    p.add_argument("out_dir")
    p.add_argument("--codec", choices=["small_600_24k_4096", "small_320_24k_4096"], default="small_600_24k_4096",
                   help="WavTokenizer (default: the 40 Hz one ELLA-V uses)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_encode_codec, check=check_encode_codec)

    p = sub.add_parser("train-codebook", help="k-means codebook of the features of every audio file under AUDIO_DIR")
    p.add_argument("audio_dir")
    p.add_argument("out_file", help="the codebook file to write (.pt: {'codebook': [K, D], 'features': ...})")
    p.add_argument("--k", type=int, required=True, help="number of centres")
    p.add_argument("--features", choices=FEATURE_NAMES, default="wavlm", help="wavlm (layer 11, default), mfcc or fbank")
    p.add_argument("--iterations", type=int, default=100, help="most Lloyd iterations after k-means++ (default 100)")
    p.add_argument("--seed", type=int, default=0, help="k-means++ seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_FILE if it exists")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available for wavlm, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_train_codebook, check=check_train_codebook)

    p = sub.add_parser("train-ulm", help="train a unit LM on the units under UNITS_DIR (resumable)")
    p.add_argument("units_dir")
    p.add_argument("out_dir")
    _add_training_args(p, all_options)
    p.set_defaults(run=cmd_train_ulm, check=check_training)

    p = sub.add_parser("train-ellav", help="train an ELLA-V on units + codec tokens (matched by relative path)")
    p.add_argument("units_dir")
    p.add_argument("codes_dir")
    p.add_argument("out_dir")
    _add_training_args(p, all_options)
    p.set_defaults(run=cmd_train_ellav, check=check_training)

    p = sub.add_parser("resynthesize", help="speech -> units -> new speech (24 kHz wav files)")
    p.add_argument("input")
    p.add_argument("out_prefix", help="writes OUT_PREFIX_0.wav, OUT_PREFIX_1.wav, ...")
    _add_model_args(p)
    p.add_argument("-n", type=int, default=1, help="number of renditions")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(run=cmd_resynthesize, check=check_resynthesize)

    p = sub.add_parser("score", help="unit-LM log-likelihood (nats) of each file, one per line")
    p.add_argument("files", nargs="+")
    _add_model_args(p)
    p.set_defaults(run=cmd_score, check=check_score)

    p = sub.add_parser("say", help="text -> ARPAbet phones -> phone ELLA-V -> 24 kHz speech (the phone topline)")
    p.add_argument("text", help='English text, or ARPAbet phones with --phones ("SIL HH AH0 L OW1 SIL"); long text '
                   'is spoken in chunks, cut at sentence ends where possible')
    p.add_argument("out_wav", help="the audio file to write; its suffix names the format: .wav, .flac, .ogg, .mp3, .aiff")
    p.add_argument("--phones", action="store_true", help="TEXT is a space-separated phone sequence (chunks end at SIL)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.set_defaults(run=cmd_say, check=check_say)

    p = sub.add_parser("wer", help="resynthesis WER and bitrate per (k, λ) on a LibriSpeech-layout folder")
    p.add_argument("audio_dir", help="folder with *.trans.txt transcripts beside the .flac/.wav files")
    p.add_argument("out_dir", help="writes wer.csv and wer.json (and audio/ with --save-audio); systems/ lets a rerun resume")
    p.add_argument("--pairs", type=_pairs, default=[(registry.DEFAULT_K, registry.DEFAULT_LMBDA)],
                   help="comma-separated K:LAMBDA, e.g. 500:4500,500:0 (default 500:4500)")
    p.add_argument("--limit", type=int, default=None, help="only the first N utterances (sorted by id)")
    p.add_argument("--no-references", action="store_true", help="skip the original-audio and codec rows")
    p.add_argument("--exact-search", action="store_true",
                   help="exact DPDP instead of the paper's 5%%-nearest-codes search the released models were trained on")
    p.add_argument("--asr-model", default="base.en", help="Whisper model name (default base.en; large-v3 on a GPU)")
    p.add_argument("--temperature", type=float, default=1.0, help="ELLA-V sampling (paper: 1.0)")
    p.add_argument("--top-p", type=float, default=0.0, help="ELLA-V nucleus (paper: 0.0, the most likely code)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="utterances per ELLA-V batch")
    p.add_argument("--save-audio", action="store_true", help="keep every resynthesis under OUT_DIR/audio/")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.set_defaults(run=cmd_wer, check=check_wer)
    if not all_options:  # the evaluation commands' choices come with the torch import: see the docstring
        return parser
    from .corpora import CORPORA
    from .evaluation import REDUCTIONS, SPLITS

    p = sub.add_parser("zerospeech", help="ZeroSpeech 2021 lexical + syntactic: submission files and official metrics")
    p.add_argument("dataset_dir", help="the sLM21 dataset: lexical/dev/*.wav + gold.csv, syntactic/dev/...")
    p.add_argument("out_dir", help="submission files, cached units, results.json")
    _add_model_args(p)
    p.add_argument("--hours", choices=["1k", "60k"], default="1k", help="released unit LM trained on 1k or 60k hours")
    p.add_argument("--ulm", default=None, help="a unit-LM checkpoint of your own instead of the released one")
    _add_search_args(p)
    p.add_argument("--splits", nargs="+", choices=SPLITS, default=["dev"])
    p.add_argument("--reduction", choices=REDUCTIONS, default="sum",
                   help="sum: summed log-likelihood per file (the original); mean: per unit")
    p.add_argument("--batch-size", type=int, default=8, help="files encoded per WavLM batch")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_zerospeech, check=check_zerospeech)

    p = sub.add_parser("abx", help="phone ABX error rates of WavLM features, DPDP features and units")
    p.add_argument("item_file", help="a ZeroSpeech / Libri-light .item file (e.g. dev-clean.item)")
    p.add_argument("audio_dir", help="the audio the item file names (e.g. LibriSpeech/dev-clean)")
    p.add_argument("out_dir", help="cached features and abx.json")
    _add_model_args(p)
    _add_search_args(p)
    p.add_argument("--representations", nargs="+", choices=["wavlm", "dpdp", "units"],
                   default=["wavlm", "dpdp", "units"])
    p.add_argument("--distance", choices=["cosine", "euclidean", "kl", "kl_symmetric"], default="cosine")
    p.add_argument("--context", choices=["within", "any"], default="within", help="within: triphone ABX (classic)")
    p.add_argument("--speaker-modes", nargs="+", choices=["within", "across"], default=["within", "across"],
                   help="within and/or across speakers (default both)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_abx, check=check_abx)

    p = sub.add_parser("download", help="fetch an evaluation corpus into $DPSLM_DATA (resumable, verified)")
    p.add_argument("corpus", choices=sorted(CORPORA))
    p.add_argument("--dir", default=None, help="target folder (default: $DPSLM_DATA)")
    p.add_argument("--no-extract", action="store_true", help="keep the archive packed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_download)
    return parser


@contextlib.contextmanager
def _library_status_shown():
    """While a command runs, the library's ``logging`` status reaches the user: info on stdout, warnings on stderr."""
    to_stdout, to_stderr = logging.StreamHandler(sys.stdout), logging.StreamHandler(sys.stderr)
    to_stdout.addFilter(lambda record: record.levelno < logging.WARNING)
    to_stderr.setLevel(logging.WARNING)
    logger, level = logging.getLogger(__package__), logging.getLogger(__package__).level
    for handler in (to_stdout, to_stderr):
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(to_stdout)
        logger.removeHandler(to_stderr)
        logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status (0 done, 1 something failed, 2 refused before any work)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with _library_status_shown():
        return _main(argv)


def _main(argv: list[str]) -> int:
    try:
        all_options = not argv or not TORCH_PARSED_COMMANDS.isdisjoint(argv) or not {"-h", "--help"}.isdisjoint(argv)
        args = build_parser(all_options).parse_args(argv)
        try:
            check_device(getattr(args, "device", None))  # first, for every command that takes --device
            if hasattr(args, "check"):
                args.check(args)  # every argument, input and output, before any model is loaded
        except (ValueError, TypeError, OSError, MissingDependency) as e:
            raise UsageError(str(e)) from e
        return args.run(args)
    except UsageError as e:
        print(f"dpslm: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError, MissingDependency) as e:  # CheckpointError, out of memory: RuntimeErrors
        print("dpslm: error:", " ".join(line.strip() for line in str(e).splitlines()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dpslm: interrupted", file=sys.stderr)
        return 130
