"""Command line: ``python -m dpslm_utils COMMAND ...`` (also the ``dpslm`` script).

Commands: demo, encode, encode-codec, train-codebook, train-ulm, train-ellav, resynthesize, score, say, wer,
zerospeech, abx, download. ``encode``, ``encode-codec``, ``train-ulm`` and ``train-ellav`` scale past
one GPU by running the same command under ``torchrun --nproc-per-node N -m dpslm_utils ...``: for
encoding every rank takes every N-th file; training uses DDP (see :mod:`dpslm_utils.training`).

Every command is check -> plan -> run: ``check_X(args)`` checks its arguments, input files and output folder
and returns a frozen plan, before any model loads; ``cmd_X(plan)`` hands the plan to the library (``encode``:
:mod:`dpslm_utils.tree_encoding`, ``demo``: :mod:`dpslm_utils.demo`, ...). Errors are one line
(``dpslm: error: ...``), without a traceback. Exit status: 0 done; 1 the work ran but something failed (a
download, a file that could not be processed); 2 the command was refused before any work (bad arguments,
missing or unreadable inputs, an unwritable output). torch, numpy and soundfile are imported inside the commands
(and the options that need torch are built only when their command is parsed), so refusals take a fraction of a
second.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import registry
from .checks import (MissingDependency, audio_format, check_count, check_creatable, check_device,
                     check_file, check_folder, check_installed, check_int, check_real, check_sampling, check_seed,
                     check_writable)  # fmt: skip
from .tree_encoding import (FEATURE_NAMES, CodesPlan, UnitsPlan, audio_files, codebook_of_folder, each_audio, find_audio,
                            plan_codes, plan_units, read_feature_codebook, recorded_lambda)  # fmt: skip

if TYPE_CHECKING:
    from torch import Tensor

SILENCE_PEAK = 1e-4
"""Input whose peak amplitude stays below this (-80 dBFS) is silent: there is nothing to resynthesize."""


class UsageError(Exception):
    """The command is refused before any work (exit status 2)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (raised as UsageError) instead of its usage block and exit, and options added
    ``later``: a command's options that need torch (a training run's settings, the evaluation choices) are added
    when that command is parsed or its help shown, so that the parser, ``dpslm --help`` and the other commands
    stay torch-free."""

    def __init__(self, *args, later: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.later = later

    def _add_later(self) -> None:
        if self.later is not None:
            later, self.later = self.later, None
            later(self)

    def parse_known_args(self, args=None, namespace=None):
        self._add_later()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._add_later()
        return super().format_help()

    def error(self, message: str):
        raise UsageError(f"{message} (see: {self.prog} --help)")


# -- helpers shared by the commands ---------------------------------------------------------------


def check_can_create(out_dir: Path) -> None:
    """Raise UsageError unless ``out_dir`` is, or can be made, a folder to write in. Leaves nothing behind,
    so a refusal after it leaves no empty output folder: the test folder it makes is removed at once."""
    import tempfile

    existing = check_creatable(out_dir)
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as e:
        where = "" if existing == out_dir else f" (in {existing})"
        raise UsageError(f"cannot write to {out_dir}: {e.strerror or e}{where}") from e


def check_input_audio(path: str) -> tuple:
    """Read a mono input (``[1, samples]``, sample rate) and check it is usable speech; UsageError if not."""
    from .audio import check_sample_rate, load_mono  # here: torch is imported only by a command that reads audio
    from .wavlm import MAX_SECONDS

    try:
        wav, sr = load_mono(check_file(path, "audio file"))
        sr = check_sample_rate(sr)
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(str(e)) from e
    if wav.shape[-1] / sr > MAX_SECONDS:
        raise UsageError(f"{path} is {wav.shape[-1] / sr:.1f} s long; WavLM takes at most {MAX_SECONDS:g} s (split it)")
    if wav.abs().max() < SILENCE_PEAK:
        raise UsageError(f"{path} is silent (peak amplitude below {SILENCE_PEAK:g}): there is no speech in it")
    return wav, sr


def write_speech(path: Path, wav, sample_rate: int, what: str) -> bool:
    """Save a rendition in the format its suffix names and print its path; one without samples is reported
    instead. True if written."""
    from .audio import save_audio

    if wav.numel() == 0:  # ELLA-V closed every unit without a codec token: nothing to write
        print(f"{what} is empty (ELLA-V produced no codec tokens); {path} was not written", file=sys.stderr)
        return False
    save_audio(path, wav, sample_rate)
    print(f"{path} ({wav.numel() / sample_rate:.2f} s at {sample_rate} Hz)")
    return True


def _say_if_random(model=None) -> None:
    """Print the random-weights note in random-tiny mode, unless ``model`` says it has no random weights."""
    from .checkpoints import RANDOM_WEIGHTS_MESSAGE, using_random_weights

    if using_random_weights() and getattr(model, "random_weights", True):
        print(f"NOTE: {RANDOM_WEIGHTS_MESSAGE}")


def _report_failed(failed: Sequence[Path], show: bool = True) -> int:
    """Exit status 1 if any file failed (listed on stderr where ``show``: by the process that reports), else 0."""
    if failed and show:
        print(f"{len(failed)} file(s) could not be encoded and were skipped:", *failed, sep="\n  ", file=sys.stderr)
    return 1 if failed else 0


# -- encode, encode-codec (dpslm_utils.tree_encoding) -----------------------------------------------


def check_encode(args: argparse.Namespace) -> UnitsPlan:
    if args.features != "wavlm" and args.codebook is None:
        raise UsageError(f"--features {args.features} needs --codebook, a codebook of {args.features} features "
                         f"(make one with: dpslm train-codebook AUDIO_DIR OUT.pt --k K --features {args.features})")
    if args.codebook is not None:
        if args.k is not None:
            raise UsageError("--k and --codebook: the codebook file sets k, give only --codebook")
        k = _codebook_size(args.codebook, args.features)
    else:
        k = registry.DEFAULT_K if args.k is None else args.k
        if k not in registry.CODEBOOK_SIZES:
            raise UsageError(f"--k {k}: no released codebook; valid k are {list(registry.CODEBOOK_SIZES)}")
    if args.units_per_second is None:
        check_real("--lmbda", registry.DEFAULT_LMBDA if args.lmbda is None else args.lmbda, minimum=0.0)
    else:
        if check_real("--units-per-second", args.units_per_second, minimum=0.0) == 0:
            raise UsageError("--units-per-second must be > 0: every file has at least one unit")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and recorded_lambda(args.out_dir, args.units_per_second) is None:
            raise UsageError("--units-per-second finds λ in one process over all files: run it once without "
                             "torchrun, then resume under torchrun (the folder keeps the λ it found)")
    if args.num_neighbors is not None:
        check_int("--num-neighbors", args.num_neighbors, 1, k)
    return plan_units(args.in_dir, args.out_dir, k=args.k, lmbda=args.lmbda, units_per_second=args.units_per_second,
                      features=args.features, codebook=args.codebook, num_neighbors=args.num_neighbors,
                      formats=["txt", "npy"] if args.format == "both" else [args.format], device=args.device,
                      progress=not args.quiet)  # fmt: skip


def _codebook_size(path: str, features: str) -> int:
    """k of the codebook file ``path``, checked to fit ``features``."""
    from .checkpoints import CheckpointError

    try:
        return len(read_feature_codebook(path, features)[0])
    except CheckpointError as e:
        raise UsageError(str(e)) from e


def cmd_encode(plan: UnitsPlan) -> int:
    result = plan.run()
    if result.bitrate is not None:  # rank 0, with .npy outputs
        rate, ran = result.bitrate, result.plan
        features = "" if ran.codebook is None else f"{ran.features} features, "
        print(f"encoded {result.encoded} files with {features}k={ran.k}, lmbda={ran.lmbda:g}: "
              f"{rate.units_per_second:.1f} units/s, {rate.entropy_bits:.2f} bits/unit, {rate.bits_per_second:.1f} bits/s")
    return _report_failed(result.failed, show=result.is_main)


def check_encode_codec(args: argparse.Namespace) -> CodesPlan:
    return plan_codes(args.in_dir, args.out_dir, codec=args.codec, device=args.device, progress=not args.quiet)


def cmd_encode_codec(plan: CodesPlan) -> int:
    result = plan.run()
    if result.is_main:
        print(f"{result.encoded} of {len(plan.tree.files)} files have {plan.codec} codes under {plan.tree.out_dir}")
    return _report_failed(result.failed, show=result.is_main)


# -- train-codebook -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodebookPlan:
    audio_dir: str
    out_file: Path
    k: int
    features: str
    iterations: int
    seed: int
    device: str | None
    progress: bool


def check_train_codebook(args: argparse.Namespace) -> CodebookPlan:
    audio_files(args.audio_dir)
    check_int("--k", args.k, minimum=1)
    check_int("--iterations", args.iterations, minimum=0)
    check_seed(args.seed)
    out_file = Path(args.out_file)
    if out_file.is_dir():
        raise UsageError(f"{out_file} is a folder; give the path of the codebook file to write")
    if out_file.exists() and not args.overwrite:
        raise UsageError(f"{out_file} exists; pass --overwrite to replace it")
    check_creatable(out_file.parent)
    check_writable(out_file.parent)
    return CodebookPlan(args.audio_dir, out_file, args.k, args.features, args.iterations, args.seed, args.device,
                        not args.quiet)  # fmt: skip


def cmd_train_codebook(plan: CodebookPlan) -> int:
    from .features import feature_encoder

    encoder = feature_encoder(plan.features, device=plan.device)
    _say_if_random(encoder)
    trained = codebook_of_folder(plan.audio_dir, encoder, plan.k, iterations=plan.iterations, seed=plan.seed,
                                 progress=plan.progress)  # ValueError: no file could be read, k > frames
    trained.save(plan.out_file)
    frames = trained.details["frames"]
    print(f"{trained.details['files']} files, {frames / encoder.frame_rate:.1f} s ({frames} frames) -> "
          f"{plan.k} centres of {plan.features} features (D = {encoder.dim}): {plan.out_file}")
    return _report_failed(trained.failed)


# -- train-ulm, train-ellav -----------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingPlan:
    folders: tuple[str, ...]
    """The data folders, then OUT_DIR: the positional arguments of ``train_ulm`` / ``train_ellav``."""
    k: int
    preset: str
    val_dir: str | None
    device: str | None
    max_steps: int | None
    overwrite: bool
    progress: bool
    overrides: tuple[tuple[str, Any], ...]
    """``(setting, value)`` of each setting given (``--lr`` ...), over the preset's."""


def check_training(args: argparse.Namespace) -> TrainingPlan:
    from .training import PRESETS  # imported with the settings options already

    check_int("--k", args.k, minimum=1)
    if args.max_steps is not None:
        check_int("--max-steps", args.max_steps, minimum=1)
    data = [folder for folder in (args.units_dir, getattr(args, "codes_dir", None)) if folder is not None]
    for folder in (*data, args.val_dir):
        if folder is not None:
            check_folder(folder)
    check_creatable(Path(args.out_dir))
    overrides = tuple((name, getattr(args, name)) for name in PRESETS["ulm"]["tiny"]
                      if name != "max_steps" and getattr(args, name) is not None)  # fmt: skip
    return TrainingPlan((*data, args.out_dir), args.k, args.preset, args.val_dir, args.device, args.max_steps,
                        args.overwrite, not args.quiet, overrides)  # fmt: skip


def _run_trainer(trainer, plan: TrainingPlan) -> int:
    """Run ``train_ulm`` / ``train_ellav`` as planned.

    The trainers raise ValueError (settings, an OUT_DIR of other settings or in use, bad data, a state that
    cannot be resumed) only before the first step: refusals. A loss that is not finite stops the
    run with a RuntimeError (exit status 1).
    """
    try:
        run = trainer(*plan.folders, k=plan.k, preset=plan.preset, val_dir=plan.val_dir, device=plan.device,
                      max_steps=plan.max_steps, overwrite=plan.overwrite, progress=plan.progress, **dict(plan.overrides))
    except ValueError as e:
        raise UsageError(str(e)) from e
    print(f"checkpoints: {run.best_checkpoint} (best), {run.last_checkpoint} (last)")
    return 0


def cmd_train_ulm(plan: TrainingPlan) -> int:
    from .training import train_ulm

    return _run_trainer(train_ulm, plan)


def cmd_train_ellav(plan: TrainingPlan) -> int:
    from .training import train_ellav

    return _run_trainer(train_ellav, plan)


# -- resynthesize, score --------------------------------------------------------------------------


@dataclass(frozen=True)
class ResynthesizePlan:
    wav: Tensor
    """``[1, samples]``: the input, read and checked."""
    sample_rate: int
    out_prefix: str
    k: int
    lmbda: int
    n: int
    temperature: float
    top_p: float
    seed: int | None
    device: str | None


def check_resynthesize(args: argparse.Namespace) -> ResynthesizePlan:
    k, lmbda = registry.check_combination(args.k, args.lmbda)
    check_count("-n", args.n)
    check_sampling(args.temperature, args.top_p)
    check_seed(args.seed)
    out_folder = Path(args.out_prefix).parent
    check_creatable(out_folder)
    check_file(args.input, "audio file")  # before check_input_audio imports torch
    wav, sr = check_input_audio(args.input)
    check_writable(out_folder)
    return ResynthesizePlan(wav, sr, args.out_prefix, k, lmbda, args.n, args.temperature, args.top_p, args.seed, args.device)


def cmd_resynthesize(plan: ResynthesizePlan) -> int:
    from .pipeline import DPSLM

    model = DPSLM.from_pretrained(plan.k, plan.lmbda, device=plan.device)
    _say_if_random()
    outputs = model.resynthesize(plan.wav, plan.sample_rate, n=plan.n, temperature=plan.temperature, top_p=plan.top_p,
                                 seed=plan.seed)  # fmt: skip
    written = [write_speech(Path(f"{plan.out_prefix}_{i}.wav"), out, model.vocoder.sample_rate, f"rendition {i}")
               for i, out in enumerate(outputs)]  # fmt: skip
    return 0 if all(written) else 1


@dataclass(frozen=True)
class ScorePlan:
    files: tuple[str, ...]
    k: int
    lmbda: int
    device: str | None


def check_score(args: argparse.Namespace) -> ScorePlan:
    k, lmbda = registry.check_combination(args.k, args.lmbda)
    problems = []
    for name in args.files:
        try:
            check_file(name, "audio file")
        except OSError as e:
            problems.append(str(e))
    if problems:
        raise UsageError("; ".join(problems))
    return ScorePlan(tuple(args.files), k, lmbda, args.device)


def cmd_score(plan: ScorePlan) -> int:
    from .pipeline import DPSLM

    model = DPSLM.from_pretrained(plan.k, plan.lmbda, device=plan.device)
    _say_if_random()
    failed: list = []  # unreadable, too long, out of memory: reported and skipped
    for name, score in each_audio(plan.files, model.loglikelihood, failed, desc="score", progress=False):
        print(f"{score:.4f}\t{name}")
    return 1 if failed else 0


# -- say, wer (phone toplines and resynthesis intelligibility) -------------------------------------


@dataclass(frozen=True)
class SayPlan:
    chunks: list[list[str]]
    """The phones to say, in chunks of at most ``phones.MAX_PHONES_PER_CHUNK``."""
    out_wav: Path
    temperature: float
    top_p: float
    seed: int | None
    device: str | None


def check_say(args: argparse.Namespace) -> SayPlan:
    from . import phones

    audio_format(args.out_wav)
    if args.phones:
        sequence = phones.as_phones(args.text)
        unknown = sorted(set(sequence) - set(registry.US_ARPA_PHONES), key=sequence.index)
        if unknown:
            raise UsageError(f"--phones: {', '.join(map(repr, unknown))} not among the phones of the phone ELLA-V: "
                             f"{' '.join(registry.US_ARPA_PHONES)}")
        chunks = phones.phone_chunks(sequence, phones.MAX_PHONES_PER_CHUNK)
    else:
        chunks = phones.text_to_phone_chunks(args.text, phones.MAX_PHONES_PER_CHUNK)
    check_sampling(args.temperature, args.top_p)
    check_seed(args.seed)
    check_creatable(Path(args.out_wav).parent)
    return SayPlan(chunks, Path(args.out_wav), args.temperature, args.top_p, args.seed, args.device)


def cmd_say(plan: SayPlan) -> int:
    from .phones import MAX_PHONES_PER_CHUNK, PhoneTTS

    tts = PhoneTTS.from_pretrained(device=plan.device)
    _say_if_random()
    if len(plan.chunks) > 1:
        print(f"{len(plan.chunks)} chunks of at most {MAX_PHONES_PER_CHUNK} phones, spoken one after another:")
    print(*(" ".join(chunk) for chunk in plan.chunks), sep="\n")
    wav = tts.speak(plan.chunks, temperature=plan.temperature, top_p=plan.top_p, seed=plan.seed)
    return 0 if write_speech(plan.out_wav, wav, tts.sample_rate, "the speech") else 1


def _pairs(text: str) -> list[tuple[int, int]]:
    """``"500:4500,500:0"`` -> ``[(500, 4500), (500, 0)]``, each a released (k, λ)."""
    try:
        pairs = [tuple(float(x) for x in item.split(":")) for item in text.split(",") if item.strip()]
        return [registry.check_combination(int(k), lmbda) for k, lmbda in pairs]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected K:LAMBDA pairs such as 500:4500,500:0 ({e})") from e


@dataclass(frozen=True)
class WerPlan:
    audio_dir: str
    out_dir: Path
    pairs: list[tuple[int, int]]
    limit: int | None
    references: bool
    exact_search: bool
    asr_model: str
    temperature: float
    top_p: float
    seed: int
    batch_size: int
    save_audio: bool
    device: str | None


def check_wer(args: argparse.Namespace) -> WerPlan:
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
    return WerPlan(args.audio_dir, Path(args.out_dir), args.pairs, args.limit, not args.no_references, args.exact_search,
                   args.asr_model, args.temperature, args.top_p, args.seed, args.batch_size, args.save_audio, args.device)  # fmt: skip


def cmd_wer(plan: WerPlan) -> int:
    from . import wer

    asr = wer.whisper_asr(plan.asr_model, device=plan.device)  # not installed or offline: one-line error
    _refuse_unless_writable(plan.out_dir)  # made only now that the ASR loaded
    rows = wer.resynthesis_wer(
        plan.audio_dir, plan.pairs, asr=asr, limit=plan.limit, references=plan.references, exact_search=plan.exact_search,
        temperature=plan.temperature, top_p=plan.top_p, seed=plan.seed, batch_size=plan.batch_size, device=plan.device,
        save_audio=plan.out_dir / "audio" if plan.save_audio else None, results_dir=plan.out_dir / "systems",
    )  # fmt: skip
    _print_wer_table(rows)
    csv_path, json_path = wer.write_results(rows, plan.out_dir)
    print(f"wrote {csv_path} and {json_path}")
    _say_if_random()
    return 0


def _refuse_unless_writable(out_dir: Path) -> None:
    try:
        check_writable(out_dir)
    except OSError as e:
        raise UsageError(str(e)) from e


def _print_wer_table(rows: list[dict]) -> None:
    print(f"\n{'system':>16} {'bits/s':>8} {'units/s':>8} {'WER %':>7} {'median %':>8}")
    for row in rows:
        name = row["system"] if row["k"] is None else f"k={row['k']} λ={row['lmbda']:g}"
        bits = "" if row["bits_per_second"] is None else f"{row['bits_per_second']:.1f}"
        units = "" if row["units_per_second"] is None else f"{row['units_per_second']:.1f}"
        print(f"{name:>16} {bits:>8} {units:>8} {100 * row['wer']:>7.2f} {100 * row['median_wer']:>8.2f}")
    print("WER %: pooled over the utterances; median %: the median of their own WERs (the paper's Figure 4)")


# -- demo (dpslm_utils.demo) ----------------------------------------------------------------------


@dataclass(frozen=True)
class DemoPlan:
    out: Path
    k: int
    lmbda: int
    seed: int
    weights: str
    device: str | None


def check_demo(args: argparse.Namespace) -> DemoPlan:
    k, lmbda = registry.check_combination(args.k, args.lmbda)
    check_seed(args.seed)
    check_creatable(Path(args.out))
    check_writable(Path(args.out))
    return DemoPlan(Path(args.out), k, lmbda, args.seed, args.weights, args.device)


def cmd_demo(plan: DemoPlan) -> int:
    from .demo import run_demo

    run_demo(plan.out, plan.k, plan.lmbda, device=plan.device, seed=plan.seed, weights=plan.weights)
    return 0


# -- evaluate: zerospeech, abx, download -----------------------------------------------------------


@dataclass(frozen=True)
class EncodingPlan:
    """The units ``zerospeech`` and ``abx`` encode: the released codebook of k, λ, and the search."""

    k: int
    lmbda: float
    num_neighbors: int | None
    device: str | None

    def settings(self) -> dict:
        from .checkpoints import using_random_weights

        return {"k": self.k, "lmbda": self.lmbda, "num_neighbors": self.num_neighbors,
                "random_weights": using_random_weights()}  # fmt: skip

    def unit_encoder(self):
        from .pipeline import UnitEncoder

        return UnitEncoder.from_pretrained(self.k, self.lmbda, self.device, self.num_neighbors)


def check_encoding(args: argparse.Namespace, command: str, partial: bool = False) -> EncodingPlan:
    """The search and OUT_DIR of ``zerospeech``/``abx``: writable (nothing is created yet), and its
    settings record (cached units/features fit only their settings).

    The search: ``--num-neighbors N``, ``--exact-search``, or (default) the paper's ``PAPER_NUM_NEIGHBORS[k]``.
    """
    from .settings_record import check_settings

    if args.k not in registry.CODEBOOK_SIZES:
        raise UsageError(f"--k {args.k}: no released codebook; valid k are {list(registry.CODEBOOK_SIZES)}")
    if args.exact_search and args.num_neighbors is not None:
        raise UsageError("give --exact-search or --num-neighbors, not both")
    if args.num_neighbors is not None:
        check_int("--num-neighbors", args.num_neighbors, 1, args.k)
    num_neighbors = args.num_neighbors if args.num_neighbors is not None or args.exact_search else registry.PAPER_NUM_NEIGHBORS[args.k]
    check_can_create(Path(args.out_dir))
    encoding = EncodingPlan(args.k, args.lmbda, num_neighbors, args.device)
    check_settings(args.out_dir, command, encoding.settings(), write=False, partial=partial)  # SettingsMismatch: a refusal
    return encoding


@dataclass(frozen=True)
class ZerospeechPlan:
    dataset_dir: str
    out_dir: Path
    encoding: EncodingPlan
    ulm: str | None
    """A unit-LM checkpoint of the user's, or None: the released one of (k, λ, hours)."""
    hours: str
    splits: list[str]
    reduction: str
    batch_size: int
    progress: bool


def check_zerospeech(args: argparse.Namespace) -> ZerospeechPlan:
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
    encoding = check_encoding(args, "zerospeech", partial=True)
    return ZerospeechPlan(args.dataset_dir, Path(args.out_dir), encoding, args.ulm, args.hours, args.splits,
                          args.reduction, args.batch_size, not args.quiet)  # fmt: skip


def cmd_zerospeech(plan: ZerospeechPlan) -> int:
    from .evaluation import evaluate_zerospeech, results_table
    from .settings_record import SettingsMismatch

    ulm, out_dir = _unit_lm(plan), plan.out_dir
    encoder = plan.encoding.unit_encoder()
    _say_if_random()
    try:
        results = evaluate_zerospeech(plan.dataset_dir, out_dir, encoder=encoder, ulm=ulm, splits=plan.splits,
                                      reduction=plan.reduction, batch_size=plan.batch_size, progress=plan.progress)
    except SettingsMismatch as e:  # the same k, λ and search, but other weights: refused before any work
        raise UsageError(str(e)) from e
    print(results_table(results))
    print(f"wrote the submission files under {out_dir}/lexical and {out_dir}/syntactic, metrics in {out_dir}/results.json")
    _say_if_random()
    return 0


def _unit_lm(plan: ZerospeechPlan):
    from .ulm import UnitLM

    k = plan.encoding.k
    if not plan.ulm:
        return UnitLM.from_pretrained(k, plan.encoding.lmbda, hours=plan.hours, device=plan.encoding.device)
    ulm = UnitLM.from_checkpoint(plan.ulm, device=plan.encoding.device)
    if ulm.k != k:
        raise UsageError(f"{plan.ulm} is a unit LM for k={ulm.k}, but --k is {k}")
    return ulm


@dataclass(frozen=True)
class AbxPlan:
    item_file: Path
    files: list[Path]
    """The audio files the item file names."""
    out_dir: Path
    encoding: EncodingPlan
    representations: list[str]
    distance: str
    context: str
    speaker_modes: list[str]
    progress: bool


def check_abx(args: argparse.Namespace) -> AbxPlan:
    from .evaluation import check_abx_triplets, check_distinct_stems, read_item_file

    check_installed("zrc_abx2", "dpslm abx")
    item_file = check_file(args.item_file, "item file")
    tokens = read_item_file(item_file)
    check_folder(args.audio_dir)
    named = {token.file for token in tokens}
    files = [f for f in find_audio(args.audio_dir) if f.stem in named]
    if not files:
        raise UsageError(f"no audio file under {args.audio_dir} is named in {item_file} "
                         f"(it names files like {sorted(named)[:2]})")
    missing = sorted(named - {f.stem for f in files})
    if missing:
        raise UsageError(f"{len(missing)} of the {len(named)} files that {item_file} names are not under "
                         f"{args.audio_dir}, e.g. {missing[:3]}")
    check_distinct_stems(files)  # features are named by the file's stem
    check_abx_triplets(item_file, tokens, args.speaker_modes, args.context)
    encoding = check_encoding(args, "abx")
    return AbxPlan(item_file, files, Path(args.out_dir), encoding, args.representations, args.distance, args.context,
                   args.speaker_modes, not args.quiet)  # fmt: skip


def cmd_abx(plan: AbxPlan) -> int:
    from .checkpoints import write_atomically
    from .evaluation import abx_error_rates, abx_representations
    from .settings_record import check_settings

    encoder = plan.encoding.unit_encoder()
    check_settings(plan.out_dir, "abx", plan.encoding.settings())  # recorded once the settings proved loadable
    _say_if_random()
    folders = abx_representations(plan.files, encoder, out_dir=plan.out_dir / "features", progress=plan.progress)
    rates = abx_error_rates(plan.item_file, {name: folders[name] for name in plan.representations},
                            frame_rate=encoder.encoder.frame_rate, distance=plan.distance, speaker_modes=plan.speaker_modes,
                            context_mode=plan.context, cuda=str(encoder.encoder.device).startswith("cuda"))  # fmt: skip
    write_atomically(plan.out_dir / "abx.json", lambda tmp: tmp.write_text(json.dumps(rates, indent=1) + "\n"))
    _print_abx_table(plan, rates)
    _say_if_random()
    return 0


def _print_abx_table(plan: AbxPlan, rates: dict[str, dict[str, float]]) -> None:
    encoding = plan.encoding
    search = "exact search" if encoding.num_neighbors is None else f"{encoding.num_neighbors} nearest codes"
    print(f"ABX error rate (%), {plan.context} context, k={encoding.k}, lmbda={encoding.lmbda:g} ({search}), "
          f"{len(plan.files)} files")
    print(f"{'representation':<15} {'within':>7} {'across':>7}")
    for name, rate in rates.items():
        print(f"{name:<15} {rate.get('within', float('nan')):>7.2f} {rate.get('across', float('nan')):>7.2f}")
    print(f"wrote {plan.out_dir}/abx.json")


@dataclass(frozen=True)
class DownloadPlan:
    corpus: str
    folder: str | None
    """Where to unpack it; None: ``$DPSLM_DATA``."""
    extract: bool
    progress: bool


def check_download(args: argparse.Namespace) -> DownloadPlan:
    return DownloadPlan(args.corpus, args.dir, not args.no_extract, not args.quiet)


def cmd_download(plan: DownloadPlan) -> int:
    from .corpora import data_dir, download_corpus

    folder = Path(plan.folder) if plan.folder else data_dir()
    archive = download_corpus(plan.corpus, folder, extract=plan.extract, progress=plan.progress)  # DownloadError: exit 1
    print(f"{plan.corpus}: {archive}" + (f" (unpacked into {folder})" if plan.extract else ""))
    return 0


# -- argument parsing -----------------------------------------------------------------------------


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, default=registry.DEFAULT_K, help="codebook size (default 500)")
    p.add_argument("--lmbda", type=float, default=registry.DEFAULT_LMBDA, help="DPDP duration penalty λ (default 4500)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def _add_training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, required=True, help="codebook size of the units")
    p.add_argument("--preset", choices=["tiny", "released"], default="tiny",
                   help="tiny: small model for a CPU; released: the original configuration")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available; under torchrun each rank its GPU)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    p.add_argument("--val-dir", default=None, help="validation units (default: hold out 2%% of the files)")
    p.add_argument("--overwrite", action="store_true", help="start over, deleting the run in OUT_DIR (else: resume it, or refuse other settings)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_training_settings(p: argparse.ArgumentParser) -> None:
    """``--lr``, ``--batch-size``, ...: every setting of the presets (added later: they come with the torch import)."""
    from .training import PRESETS

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


def _add_zerospeech_options(p: argparse.ArgumentParser) -> None:
    """``zerospeech``'s options from ``--splits`` on (added later: the choices of :mod:`dpslm_utils.evaluation` come
    with the torch import)."""
    from .evaluation import REDUCTIONS, SPLITS

    p.add_argument("--splits", nargs="+", choices=SPLITS, default=["dev"])
    p.add_argument("--reduction", choices=REDUCTIONS, default="sum",
                   help="sum: summed log-likelihood per file (the original); mean: per unit")
    p.add_argument("--batch-size", type=int, default=8, help="files encoded per WavLM batch")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_corpus_choices(p: argparse.ArgumentParser) -> None:
    """The corpora of :mod:`dpslm_utils.corpora` (added later: it imports torch)."""
    from .corpora import CORPORA

    p.add_argument("corpus", choices=sorted(CORPORA))


def build_parser() -> argparse.ArgumentParser:
    """The ``dpslm`` parser. Building it imports no torch: the options that need it are added when their
    command is parsed (see :class:`ArgumentParser`)."""
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

    p = sub.add_parser("train-ulm", help="train a unit LM on the units under UNITS_DIR (resumable)",
                       later=_add_training_settings)
    p.add_argument("units_dir")
    p.add_argument("out_dir")
    _add_training_args(p)
    p.set_defaults(run=cmd_train_ulm, check=check_training)

    p = sub.add_parser("train-ellav", help="train an ELLA-V on units + codec tokens (matched by relative path)",
                       later=_add_training_settings)
    p.add_argument("units_dir")
    p.add_argument("codes_dir")
    p.add_argument("out_dir")
    _add_training_args(p)
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

    p = sub.add_parser("zerospeech", help="ZeroSpeech 2021 lexical + syntactic: submission files and official metrics",
                       later=_add_zerospeech_options)
    p.add_argument("dataset_dir", help="the sLM21 dataset: lexical/dev/*.wav + gold.csv, syntactic/dev/...")
    p.add_argument("out_dir", help="submission files, cached units, results.json")
    _add_model_args(p)
    p.add_argument("--hours", choices=["1k", "60k"], default="1k", help="released unit LM trained on 1k or 60k hours")
    p.add_argument("--ulm", default=None, help="a unit-LM checkpoint of your own instead of the released one")
    _add_search_args(p)
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

    p = sub.add_parser("download", help="fetch an evaluation corpus into $DPSLM_DATA (resumable, verified)",
                       later=_add_corpus_choices)
    p.add_argument("--dir", default=None, help="target folder (default: $DPSLM_DATA)")
    p.add_argument("--no-extract", action="store_true", help="keep the archive packed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_download, check=check_download)
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
        args = build_parser().parse_args(argv)
        try:
            check_device(getattr(args, "device", None), "--device")  # first, for every command that takes --device
            plan = args.check(args)  # every argument, input and output, before any model is loaded
        except (ValueError, TypeError, OSError, MissingDependency) as e:
            raise UsageError(str(e)) from e
        return args.run(plan)
    except UsageError as e:
        print(f"dpslm: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError, MissingDependency) as e:  # CheckpointError, out of memory: RuntimeErrors
        print("dpslm: error:", " ".join(line.strip() for line in str(e).splitlines()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dpslm: interrupted", file=sys.stderr)
        return 130
