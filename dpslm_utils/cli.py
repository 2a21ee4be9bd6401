"""Command line: ``python -m dpslm_utils {demo,encode,encode-codec,train-ulm,train-ellav,resynthesize,score,say,wer} ...``.

(Also the ``dpslm`` script.) ``encode``, ``encode-codec``, ``train-ulm`` and ``train-ellav`` scale past
one GPU by running the same command under ``torchrun --nproc-per-node N -m dpslm_utils ...``: for
encoding every rank takes every N-th file; training uses DDP (see :mod:`dpslm_utils.training`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed, registry
from .audio import example_audio, load_audio, save_wav, to_mono
from .checkpoints import (
    RANDOM_WEIGHTS_MESSAGE,
    WEIGHTS_ENV,
    CheckpointError,
    using_random_weights,
    weights_mode,
    write_atomically,
)
from .settings_record import SettingsMismatch, check_settings

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


# -- helpers shared by the commands ---------------------------------------------------------------


def find_audio(in_dir: Path) -> list[Path]:
    """Every audio file under ``in_dir``, sorted (so all ranks agree on the order)."""
    if not in_dir.is_dir():
        raise SystemExit(f"error: {in_dir} is not a directory")
    return sorted(p for p in in_dir.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """The items rank ``rank`` of ``world_size`` processes handles: every world_size-th, from ``rank``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    return list(items[rank::world_size])


def check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as e:
        raise SystemExit(f"error: cannot write to {out_dir}: {e.strerror or e}") from e


def units_text(units: torch.Tensor) -> str:
    """Deduplicated units as the text the originals use: ``"u12 u7 u300"``."""
    return " ".join(f"u{u}" for u in units.tolist())


def _read_mono(path: Path) -> tuple[torch.Tensor, int]:
    wav, sr = load_audio(path)
    return to_mono(wav), sr


def _say_if_random() -> None:
    if using_random_weights():
        print(f"NOTE: {RANDOM_WEIGHTS_MESSAGE}")


# -- encode ---------------------------------------------------------------------------------------


def _outputs(audio: Path, in_dir: Path, out_dir: Path, formats: list[str]) -> dict[str, Path]:
    base = out_dir / audio.relative_to(in_dir).with_suffix("")
    return {fmt: base.with_name(base.name + f".{fmt}") for fmt in formats}


def _write_units(outputs: dict[str, Path], units: torch.Tensor, durations: torch.Tensor) -> None:
    from .datasets import save_units

    if "npy" in outputs:  # [N, 2]: unit, duration in 50 Hz frames
        save_units(outputs["npy"], units, durations)
    if "txt" in outputs:
        write_atomically(outputs["txt"], lambda tmp: tmp.write_text(units_text(units) + "\n"))


def _read_frame_units(outputs: dict[str, Path]) -> torch.Tensor | None:
    if "npy" not in outputs:
        return None
    from .datasets import load_frame_units

    return load_frame_units(outputs["npy"])


def _encode_tree(args: argparse.Namespace, command: str, settings: dict, formats: list[str], load, encode, write):
    """Shared driver of ``encode`` and ``encode-codec``: every audio file under IN_DIR -> files under OUT_DIR.

    Resumable (files whose outputs exist are skipped), refuses an OUT_DIR made with other settings,
    reports unreadable files and goes on, shards the files across torchrun ranks. ``load()`` builds the
    model once, ``encode(model, wav, sr)`` encodes one file, ``write(outputs, result)`` saves it.
    Returns ``(all files, failed files, dist)``.
    """
    try:
        dist = distributed.setup(args.device)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    in_dir, out_dir = Path(args.in_dir), Path(args.out_dir)
    check_writable(out_dir)
    try:
        check_settings(out_dir, command, settings, write=False)
    except SettingsMismatch as e:
        distributed.teardown(dist)
        raise SystemExit(f"error: {e}") from e
    files = find_audio(in_dir)
    mine = shard(files, dist.rank, dist.world_size)
    todo = [f for f in mine if not all(p.exists() for p in _outputs(f, in_dir, out_dir, formats).values())]
    print(f"{dist.prefix}{len(files)} audio files under {in_dir}: {len(mine)} for this process, "
          f"{len(mine) - len(todo)} already encoded, {len(todo)} to do")

    model = load(dist.device)
    check_settings(out_dir, command, settings, write=dist.is_main)  # recorded once the settings proved loadable
    _say_if_random()
    failed = []
    for path in tqdm(todo, desc=f"{command} (rank {dist.rank})" if dist.enabled else command, disable=args.quiet):
        try:
            wav, sr = _read_mono(path)
            result = encode(model, wav, sr)
        except (ValueError, OSError) as e:
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


def cmd_encode(args: argparse.Namespace) -> int:
    from .pipeline import UnitEncoder
    from .quantize import bitrate

    formats = ["txt", "npy"] if args.format == "both" else [args.format]
    settings = {"k": args.k, "lmbda": args.lmbda, "num_neighbors": args.num_neighbors, "weights": weights_mode()}
    files, failed, dist = _encode_tree(
        args, "encode", settings, formats,
        load=lambda device: UnitEncoder.from_pretrained(args.k, args.lmbda, device, args.num_neighbors),
        encode=lambda encoder, wav, sr: encoder.encode(wav, sr),
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
        print(f"encoded {len(frame_units)} files with k={args.k}, lmbda={args.lmbda:g}: "
              f"{rate.units_per_second:.1f} units/s, {rate.entropy_bits:.2f} bits/unit, "
              f"{rate.bits_per_second:.1f} bits/s")
    return _report_failed(failed)


def cmd_encode_codec(args: argparse.Namespace) -> int:
    from .wavtokenizer import WavTokenizer

    from .datasets import save_array

    def write(outputs: dict[str, Path], codes: torch.Tensor) -> None:
        save_array(outputs["npy"], codes.cpu().numpy().astype(np.int16))  # 4096 codes fit in int16

    files, failed, dist = _encode_tree(
        args, "encode-codec", {"codec": args.codec, "weights": weights_mode()}, ["npy"],
        load=lambda device: WavTokenizer.from_pretrained(args.codec, device=device),
        encode=lambda codec, wav, sr: codec.encode(wav, sr),
        write=write,
    )  # fmt: skip
    if dist.is_main:
        print(f"{len(files) - len(failed)} of {len(files)} files have {args.codec} codes under {args.out_dir}")
    return _report_failed(failed) if dist.is_main else (1 if failed else 0)


# -- train-ulm, train-ellav -----------------------------------------------------------------------


def _training_overrides(args: argparse.Namespace) -> dict:
    from .training import PRESETS

    names = PRESETS["ulm"]["tiny"].keys()
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None and name != "max_steps"}


def _training_errors(train, *args, **kwargs):
    """Run a trainer; bad settings or data become a one-line error."""
    try:
        return train(*args, **kwargs)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e


def cmd_train_ulm(args: argparse.Namespace) -> int:
    from .training import train_ulm

    run = _training_errors(train_ulm, args.units_dir, args.out_dir, k=args.k, preset=args.preset, val_dir=args.val_dir,
                    device=args.device, max_steps=args.max_steps, overwrite=args.overwrite,
                    progress=not args.quiet, **_training_overrides(args))  # fmt: skip
    print(f"checkpoints: {run.best_checkpoint} (best), {run.last_checkpoint} (last)")
    return 0


def cmd_train_ellav(args: argparse.Namespace) -> int:
    from .training import train_ellav

    run = _training_errors(train_ellav, args.units_dir, args.codes_dir, args.out_dir, k=args.k, preset=args.preset,
                      val_dir=args.val_dir, device=args.device, max_steps=args.max_steps,
                      overwrite=args.overwrite, progress=not args.quiet, **_training_overrides(args))  # fmt: skip
    print(f"checkpoints: {run.best_checkpoint} (best), {run.last_checkpoint} (last)")
    return 0


# -- resynthesize, score --------------------------------------------------------------------------


def cmd_resynthesize(args: argparse.Namespace) -> int:
    from .pipeline import DPSLM

    model = DPSLM.from_pretrained(args.k, args.lmbda, device=args.device)
    _say_if_random()
    wav, sr = _read_mono(Path(args.input))
    outputs = model.resynthesize(wav, sr, n=args.n, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    for i, out in enumerate(outputs):
        path = Path(f"{args.out_prefix}_{i}.wav")
        save_wav(path, out, model.vocoder.sample_rate)
        print(path)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from .pipeline import DPSLM

    model = DPSLM.from_pretrained(args.k, args.lmbda, device=args.device)
    _say_if_random()
    failed = 0
    for name in args.files:
        try:
            wav, sr = _read_mono(Path(name))
            print(f"{model.loglikelihood(wav, sr):.4f}\t{name}")
        except (ValueError, OSError) as e:
            failed += 1
            print(f"skipped {name}: {e}", file=sys.stderr)
    return 1 if failed else 0


# -- say, wer (phone toplines and resynthesis intelligibility) -------------------------------------


def cmd_say(args: argparse.Namespace) -> int:
    from .phones import PhoneTTS, as_phones, text_to_phones

    try:  # check the text before loading any model
        phones = as_phones(args.text) if args.phones else text_to_phones(args.text, silences=True)
    except (ValueError, TypeError, ImportError) as e:
        raise SystemExit(f"error: {e}") from e
    tts = PhoneTTS.from_pretrained(device=args.device)
    _say_if_random()
    print(" ".join(phones))
    try:
        (speech,) = tts.synthesize(phones, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    except ValueError as e:  # a phone the model does not know, or bad sampling settings
        raise SystemExit(f"error: {e}") from e
    save_wav(Path(args.out_wav), speech.wav, speech.sample_rate)
    print(f"{args.out_wav} ({len(speech.wav) / speech.sample_rate:.2f} s at {speech.sample_rate} Hz)")
    return 0


def _pairs(text: str) -> list[tuple[int, int]]:
    """``"500:4500,500:0"`` -> ``[(500, 4500), (500, 0)]``, each a released (k, λ)."""
    try:
        pairs = [tuple(float(x) for x in item.split(":")) for item in text.split(",") if item.strip()]
        return [registry.check_combination(int(k), lmbda) for k, lmbda in pairs]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected K:LAMBDA pairs such as 500:4500,500:0 ({e})") from e


def cmd_wer(args: argparse.Namespace) -> int:
    from . import wer

    if not args.pairs and args.no_references:
        raise SystemExit("error: nothing to measure: give --pairs or drop --no-references")
    if args.batch_size < 1:
        raise SystemExit(f"error: --batch-size must be >= 1, got {args.batch_size}")
    try:
        wer.read_transcripts(args.audio_dir, args.limit)  # fail on a bad folder before loading any model
        asr = wer.whisper_asr(args.asr_model, device=args.device)
    except (ValueError, wer.ASRUnavailable) as e:
        raise SystemExit(f"error: {e}") from e
    out_dir = Path(args.out_dir)
    check_writable(out_dir)
    rows = wer.resynthesis_wer(
        args.audio_dir, args.pairs, asr=asr, limit=args.limit, references=not args.no_references,
        exact_search=args.exact_search, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
        batch_size=args.batch_size, device=args.device, save_audio=out_dir / "audio" if args.save_audio else None,
        results_dir=out_dir / "systems",
    )  # fmt: skip
    print(f"\n{'system':>16} {'bits/s':>8} {'units/s':>8} {'WER %':>7}")
    for row in rows:
        name = row["system"] if row["k"] is None else f"k={row['k']} λ={row['lmbda']:g}"
        bits = "" if row["bits_per_second"] is None else f"{row['bits_per_second']:.1f}"
        units = "" if row["units_per_second"] is None else f"{row['units_per_second']:.1f}"
        print(f"{name:>16} {bits:>8} {units:>8} {100 * row['wer']:>7.2f}")
    csv_path, json_path = wer.write_results(rows, out_dir)
    print(f"wrote {csv_path} and {json_path}")
    _say_if_random()
    return 0


# -- demo -----------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
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
    from .pipeline import DPSLM

    out = Path(args.out)
    check_writable(out)
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
        save_wav(out / f"resynthesis_{i}.wav", s.wav, s.sample_rate)
    save_wav(out / "original.wav", wav, sr)

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
    print(f"\nwrote {out}/units.txt, original.wav, resynthesis_0.wav, resynthesis_1.wav and demo.png")
    _say_if_random()
    return 0


# -- argument parsing -----------------------------------------------------------------------------


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, default=registry.DEFAULT_K, help="codebook size (default 500)")
    p.add_argument("--lmbda", type=float, default=registry.DEFAULT_LMBDA, help="DPDP duration penalty λ (default 4500)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def _add_training_args(p: argparse.ArgumentParser) -> None:
    from .training import PRESETS

    p.add_argument("--k", type=int, required=True, help="codebook size of the units")
    p.add_argument("--preset", choices=["tiny", "released"], default="tiny",
                   help="tiny: small model for a CPU; released: the original configuration")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available; under torchrun each rank its GPU)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    p.add_argument("--val-dir", default=None, help="validation units (default: hold out 2%% of the files)")
    p.add_argument("--overwrite", action="store_true", help="start over, deleting the run in OUT_DIR (else: resume it, or refuse other settings)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    settings = p.add_argument_group("settings (default: the preset's)")
    for name, value in PRESETS["ulm"]["tiny"].items():
        if name != "max_steps":
            settings.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None, metavar=type(value).__name__.upper())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpslm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="encode, resynthesize and score the bundled example")
    _add_model_args(p)
    p.add_argument("--out", default="outputs/demo", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", choices=["auto", "pretrained", "random-tiny"], default="auto",
                   help="auto: the official checkpoints, or random tiny weights when they cannot be downloaded")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("encode", help="every audio file under IN_DIR -> DPDP units under OUT_DIR (resumable)")
    p.add_argument("in_dir")
    p.add_argument("out_dir")
    _add_model_args(p)
    p.add_argument("--num-neighbors", type=int, default=None, help="restrict each frame to its N nearest codes")
    p.add_argument("--format", choices=["txt", "npy", "both"], default="both",
                   help="txt: 'u12 u7 ...'; npy: int64 [N, 2] of (unit, duration in 50 Hz frames)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_encode)

    p = sub.add_parser("encode-codec", help="every audio file under IN_DIR -> WavTokenizer codes (.npy) under OUT_DIR")
    p.add_argument("in_dir")
    p.add_argument("out_dir")
    p.add_argument("--codec", choices=["small_600_24k_4096", "small_320_24k_4096"], default="small_600_24k_4096",
                   help="WavTokenizer (default: the 40 Hz one ELLA-V uses)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_encode_codec)

    p = sub.add_parser("train-ulm", help="train a unit LM on the units under UNITS_DIR (resumable)")
    p.add_argument("units_dir")
    p.add_argument("out_dir")
    _add_training_args(p)
    p.set_defaults(run=cmd_train_ulm)

    p = sub.add_parser("train-ellav", help="train an ELLA-V on units + codec tokens (matched by relative path)")
    p.add_argument("units_dir")
    p.add_argument("codes_dir")
    p.add_argument("out_dir")
    _add_training_args(p)
    p.set_defaults(run=cmd_train_ellav)

    p = sub.add_parser("resynthesize", help="speech -> units -> new speech (24 kHz wav files)")
    p.add_argument("input")
    p.add_argument("out_prefix", help="writes OUT_PREFIX_0.wav, OUT_PREFIX_1.wav, ...")
    _add_model_args(p)
    p.add_argument("-n", type=int, default=1, help="number of renditions")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(run=cmd_resynthesize)

    p = sub.add_parser("score", help="unit-LM log-likelihood (nats) of each file, one per line")
    p.add_argument("files", nargs="+")
    _add_model_args(p)
    p.set_defaults(run=cmd_score)

    p = sub.add_parser("say", help="text -> ARPAbet phones -> phone ELLA-V -> 24 kHz speech (the phone topline)")
    p.add_argument("text", help='English text, or ARPAbet phones with --phones ("SIL HH AH0 L OW1 SIL")')
    p.add_argument("out_wav")
    p.add_argument("--phones", action="store_true", help="TEXT is a space-separated phone sequence")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.set_defaults(run=cmd_say)

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
    p.set_defaults(run=cmd_wer)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("demo", "resynthesize", "score"):  # these need a released (k, λ) pair
        try:
            args.k, args.lmbda = registry.check_combination(args.k, args.lmbda)
        except ValueError as e:
            parser.error(str(e))
    return args.run(args)
