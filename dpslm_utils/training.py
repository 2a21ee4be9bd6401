"""Train a unit LM or an ELLA-V on your own units: plain PyTorch, resumable, DDP under torchrun.

    train_ulm(units_dir, out_dir, k=500)                  # the unit LM (Mistral-ULM objective)
    train_ellav(units_dir, codes_dir, out_dir, k=500)     # units -> WavTokenizer codes (ELLA-V)

Both train the package's one decoder (:class:`~dpslm_utils.transformer.Transformer`) with the
originals' objective and optimisation: AdamW, a linear ramp from ``lr_init`` to ``lr`` over
``warmup_steps``, a cosine decay to ``lr_final`` over ``decay_steps``, then constant; gradient
clipping, gradient accumulation, bf16 autocast on CUDA (float32 on CPU). ``preset="released"`` is the
original configuration; ``preset="tiny"`` trains a small model on a CPU in a minute or two.

OUT_DIR receives ``config.json`` (every setting and a data summary), ``metrics.jsonl`` (one line per
``log_interval`` steps: train loss, learning rate, tokens/s; plus validation loss every
``eval_interval`` steps), ``best.pt`` (lowest validation loss) and ``last.pt`` in the official
checkpoint layouts (``UnitLM.from_checkpoint`` / ``ELLAV.from_checkpoint`` and the originals load
them) and ``train_state.pt`` to resume. Running the same call again resumes from the last saved step;
other settings into the same OUT_DIR are refused unless ``overwrite=True``.

Saving has one commit point: ``train_state.pt`` (written to a temporary file, then renamed) holds
everything a resume needs: the weights, the optimizer, the step, the best validation loss so far and
its step, every rank's random state, the number of processes and a fingerprint of the data. Only
then are ``best.pt`` and ``last.pt`` exported from it, and a resume exports them again, so a kill at
any moment resumes from one step, never a mix. A resume on another number of processes or after the
data changed is refused. ``OUT_DIR/train.lock`` is held while a run trains (a second run into the
folder is refused; the operating system releases the lock when the process ends, however it ends).
A training or validation loss that is not finite stops the run (:class:`TrainingDiverged`).

Under ``torchrun --nproc-per-node N`` every rank computes ``grad_accum`` micro-batches per step and
DDP averages the gradients: a step sees ``N x grad_accum x batch_size`` sequences, exactly the
micro-batches one process with ``N x grad_accum`` would see. Rank 0 writes every file. The data
order is a function of ``seed`` and the step (a seeded shuffle per epoch, seeded chunk starts), so a
resumed run sees the batches the uninterrupted one would have seen.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import datasets, ellav, ulm
from .checkpoints import CheckpointError, leftover_temporaries, load_checkpoint, save_atomically, write_atomically
from .checks import MAX_SEED, check_device, check_int, check_real
from .distributed import Distributed, barrier, setup, teardown
from .ellav import unit_tokenizer
from .transformer import ModelArgs, Transformer

try:
    import fcntl  # the folder lock (POSIX)
except ImportError:  # Windows
    fcntl = None

# fmt: off
_RELEASED_MODEL = dict(dim=1024, n_layers=12, head_dim=64, hidden_dim=4096, n_heads=16, n_kv_heads=16,
                       norm_eps=1e-6, rope_theta=10000.0)
_TINY_MODEL = dict(dim=96, n_layers=2, head_dim=24, hidden_dim=256, n_heads=4, n_kv_heads=4,
                   norm_eps=1e-6, rope_theta=10000.0)
_SHARED = dict(lr_init=1e-7, lr_final=1e-5, beta1=0.9, beta2=0.999, grad_clip=1.0, val_fraction=0.02, seed=0)
PRESETS: dict[str, dict[str, dict]] = {
    "ulm": {
        "released": dict(_RELEASED_MODEL, dropout=0.15, batch_size=12, grad_accum=8, chunk_size=1024, lr=5e-4,
                         warmup_steps=2000, decay_steps=8000, max_steps=10000, weight_decay=0.05, eps=1e-8,
                         eval_interval=1000, log_interval=10, **_SHARED),
        "tiny": dict(_TINY_MODEL, dropout=0.1, batch_size=16, grad_accum=1, chunk_size=128, lr=3e-3,
                     warmup_steps=20, decay_steps=280, max_steps=300, weight_decay=0.05, eps=1e-8,
                     eval_interval=50, log_interval=10, **dict(_SHARED, lr_final=1e-4)),
    },
    "ellav": {
        "released": dict(_RELEASED_MODEL, dropout=0.0, batch_size=8, grad_accum=8, chunk_size=0, lr=5e-4,
                         warmup_steps=1000, decay_steps=9000, max_steps=10000, weight_decay=0.01, eps=1e-9,
                         eval_interval=1000, log_interval=10, **_SHARED),
        "tiny": dict(_TINY_MODEL, dropout=0.0, batch_size=8, grad_accum=1, chunk_size=0, lr=3e-3,
                     warmup_steps=20, decay_steps=280, max_steps=300, weight_decay=0.01, eps=1e-9,
                     eval_interval=50, log_interval=10, **dict(_SHARED, lr_final=1e-4)),
    },
}
"""Every setting of each preset. ``chunk_size`` is the unit LM's (ELLA-V trains on whole utterances)."""
# fmt: on

log = logging.getLogger(__name__)

RESUMABLE_CHANGES = ("max_steps", "eval_interval", "log_interval")
"""Settings that may change between a run and its resumption (train longer, log more often)."""

# fmt: off
SETTING_RANGES: dict[str, tuple[bool, str, Callable[[float], bool]]] = {
    **{name: (True, ">= 1", lambda x: x >= 1) for name in ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads",
       "n_kv_heads", "batch_size", "grad_accum", "max_steps", "eval_interval", "log_interval")},
    **{name: (True, ">= 0", lambda x: x >= 0) for name in ("warmup_steps", "decay_steps", "chunk_size")},
    "seed": (True, f"from 0 to {MAX_SEED}", lambda x: 0 <= x <= MAX_SEED),
    **{name: (False, ">= 0", lambda x: x >= 0) for name in ("lr", "lr_init", "lr_final", "weight_decay", "grad_clip")},
    **{name: (False, "> 0", lambda x: x > 0) for name in ("eps", "norm_eps", "rope_theta")},
    **{name: (False, "in [0, 1)", lambda x: 0 <= x < 1) for name in ("beta1", "beta2", "dropout")},
    "val_fraction": (False, "in (0, 1)", lambda x: 0 < x < 1),
}
"""Every setting of :data:`PRESETS`: ``(integer?, the allowed range in words, its test)``; numbers are also finite."""
# fmt: on

STATE_KEYS = ("step", "tokens", "best_val_loss", "best_step", "world_size", "data_fingerprint", "rng", "model", "optimizer")
"""What ``train_state.pt``, the commit point of every save, holds: tensors and plain values only."""
STATE_NAME, LOCK_NAME = "train_state.pt", "train.lock"
RUN_FILES = ("config.json", "metrics.jsonl", "best.pt", "last.pt", STATE_NAME)


class TrainingDiverged(RuntimeError):
    """The training or validation loss is not finite: the run stopped (nothing of that step was saved)."""


@dataclass
class TrainingRun:
    """A training output folder: its settings, metrics and checkpoints."""

    out_dir: Path

    @property
    def config(self) -> dict:
        return json.loads((self.out_dir / "config.json").read_text())

    @property
    def metrics(self) -> list[dict]:
        """The lines of ``metrics.jsonl``: ``step``, ``tokens``, ``train_loss``, ``lr``, ``tokens_per_s`` (+ ``val_loss``)."""
        return [record for _, record in _metric_lines(self.out_dir / "metrics.jsonl")]

    @property
    def best_checkpoint(self) -> Path:
        return self.out_dir / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def state_file(self) -> Path:
        """``train_state.pt``: the commit point of every save, what a resume reads."""
        return self.out_dir / STATE_NAME

    def __repr__(self) -> str:
        metrics = [m for m in self.metrics if m.get("val_loss") is not None]
        best = f", best val_loss {min(m['val_loss'] for m in metrics):.4f}" if metrics else ""
        return f"TrainingRun({str(self.out_dir)!r}, {self.config.get('task')}, step {self.config.get('steps_done', 0)}{best})"


def learning_rate(step: int, config: dict) -> float:
    """The originals' schedule after ``step`` optimizer steps: linear ramp, cosine decay, then constant."""
    warmup, decay = config["warmup_steps"], config["decay_steps"]
    lr_init, lr_max, lr_final = config["lr_init"], config["lr"], config["lr_final"]
    if step <= warmup:
        return lr_init + (lr_max - lr_init) * step / max(warmup, 1)
    if step <= warmup + decay:
        return (0.5 * math.cos((step - warmup) / decay * math.pi) + 0.5) * (lr_max - lr_final) + lr_final
    return lr_final


def resolve_config(task: str, preset: str, k: int, overrides: dict) -> dict:
    """The preset's settings with ``overrides`` applied; raise ValueError naming unknown or bad values."""
    if preset not in PRESETS[task]:
        raise ValueError(f"preset must be one of {sorted(PRESETS[task])}, got {preset!r}")
    config = dict(PRESETS[task][preset])
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"unknown training setting(s) {unknown}; known: {sorted(config)}")
    config.update({name: value for name, value in overrides.items() if value is not None})
    k = check_int("k (the codebook size)", k, 1, datasets.MAX_K)
    config = {name: _checked_setting(name, value) for name, value in config.items()}
    if task == "ulm" and config["chunk_size"] < 2:
        raise ValueError(f"chunk_size must be at least 2 tokens, got {config['chunk_size']!r}")
    ModelArgs(**_model_sizes(config), vocab_size=1)  # checks heads and head_dim
    return {"task": task, "preset": preset, "k": k, **config}


def _checked_setting(name: str, value):
    """``value`` as a Python int or float if it is one of :data:`SETTING_RANGES`; TypeError or ValueError naming it."""
    integer, allowed, test = SETTING_RANGES[name]
    value = check_int(name, value) if integer else check_real(name, value)
    if not test(value):
        raise ValueError(f"{name} must be {'an integer ' if integer else ''}{allowed}, got {value!r}")
    return value


def _model_sizes(config: dict) -> dict:
    return {name: config[name] for name in _TINY_MODEL}


# -- the two tasks: data, loss, checkpoint --------------------------------------------------------


class _UnitLMTask:
    """Chunks of the unit corpus; whole utterances for validation."""

    ignore_index = -100
    output_bias = False

    def __init__(self, config: dict, train: datasets.UnitCorpus, val: datasets.UnitCorpus):
        self.config, self.train, self.val = config, train, val
        self.vocab_size = config["k"] + datasets.UNIT_OFFSET
        self._plan: tuple[int, torch.Tensor] | None = None
        self.lengths = train.offsets.diff()

    def num_items(self) -> int:
        return len(self.train)

    def fingerprint(self) -> str:
        return _fingerprint(part for corpus in (self.train, self.val)
                            for part in (corpus.ids, corpus.offsets, "\n".join(corpus.chapters)))  # fmt: skip

    def batch(self, epoch: int, items: torch.Tensor) -> datasets.PackedBatch:
        if self._plan is None or self._plan[0] != epoch:  # the epoch's random chunk starts
            generator = torch.Generator().manual_seed(_seed(self.config["seed"], epoch, 1))
            self._plan = (epoch, (torch.rand(len(self.train), generator=generator, dtype=torch.float64)
                                  * self.lengths).long())  # fmt: skip
        chunks = [self.train.chunk(int(i), int(self._plan[1][i]), self.config["chunk_size"]) for i in items]
        chunks = [c for c in chunks if len(c) >= 2]
        return datasets.PackedBatch.pack(chunks, [datasets.chunk_loss_mask(len(c)) for c in chunks])

    def val_batches(self, rank: int, world_size: int):
        utterances = [self.val.utterance(i) for i in range(rank, len(self.val), world_size)]
        utterances = [u for u in utterances if len(u) >= 2]
        for begin in range(0, len(utterances), self.config["batch_size"]):
            group = utterances[begin : begin + self.config["batch_size"]]
            yield datasets.PackedBatch.pack(group, [datasets.chunk_loss_mask(len(u)) for u in group])

    def checkpoint(self, model: Transformer) -> dict:
        return ulm.official_checkpoint(model, dropout=self.config["dropout"])


class _ELLAVTask:
    """Whole utterances, each one ``encode_train`` example."""

    output_bias = True

    def __init__(self, config: dict, train: list, val: list):
        self.config, self.train, self.val = config, train, val
        self.tokenizer = unit_tokenizer(config["k"])
        self.vocab_size = len(self.tokenizer["token_to_id_dict"])
        self.ignore_index = self.tokenizer["UNK_id"]

    def num_items(self) -> int:
        return len(self.train)

    def fingerprint(self) -> str:
        return _fingerprint(tensor for pairs in (self.train, self.val) for pair in pairs for tensor in pair)

    def _pack(self, pairs: list) -> datasets.PackedBatch:
        examples = [datasets.ellav_example(units, codes, self.tokenizer) for units, codes in pairs]
        return datasets.PackedBatch.pack([e.ids for e in examples], [e.loss_mask for e in examples])

    def batch(self, epoch: int, items: torch.Tensor) -> datasets.PackedBatch:
        return self._pack([self.train[int(i)] for i in items])

    def val_batches(self, rank: int, world_size: int):
        pairs = self.val[rank::world_size]
        for begin in range(0, len(pairs), self.config["batch_size"]):
            yield self._pack(pairs[begin : begin + self.config["batch_size"]])

    def checkpoint(self, model: Transformer) -> dict:
        return ellav.official_checkpoint(model, self.tokenizer)


def _on_cpu(value):
    """``value`` (a checkpoint: nested dicts) with every tensor on the CPU, so any machine loads the file."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return {key: _on_cpu(item) for key, item in value.items()} if isinstance(value, dict) else value


def _fingerprint(parts) -> str:
    """SHA-256 of tensors and strings in order, each prefixed by its size: what a resume compares to the saved data."""
    digest = hashlib.sha256()
    for part in parts:
        data = memoryview(part.encode() if isinstance(part, str) else part.contiguous().numpy()).cast("B")
        digest.update(f"{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


def _seed(seed: int, epoch: int, purpose: int) -> int:
    return (seed * 1_000_003 + epoch * 101 + purpose) % (2**63)


class _Batches:
    """Micro-batch ``g`` of the endless stream: epoch ``g // per_epoch``, each epoch a seeded shuffle."""

    def __init__(self, task, config: dict):
        self.task, self.config = task, config
        self.per_epoch = math.ceil(task.num_items() / config["batch_size"])
        self._order: tuple[int, torch.Tensor] | None = None

    def __getitem__(self, index: int) -> datasets.PackedBatch:
        epoch, position = divmod(index, self.per_epoch)
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(_seed(self.config["seed"], epoch, 0))
            self._order = (epoch, torch.randperm(self.task.num_items(), generator=generator))
        size = self.config["batch_size"]
        return self.task.batch(epoch, self._order[1][position * size : (position + 1) * size])


class _PackedLoss(nn.Module):
    """Mean cross-entropy over the loss-masked targets of a packed batch (what DDP wraps)."""

    def __init__(self, model: Transformer, ignore_index: int):
        super().__init__()
        self.model, self.ignore_index = model, ignore_index

    def forward(self, src_ids, tgt_ids, loss_mask, seqlens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean loss, number of targets counted)``."""
        logits = self.model.forward_packed(src_ids, seqlens)
        counted = loss_mask & (tgt_ids != self.ignore_index)
        nll = F.cross_entropy(logits[counted], tgt_ids[counted], reduction="sum")
        count = counted.sum()
        return nll / count.clamp(min=1), count


# -- reading the data -----------------------------------------------------------------------------


def _split(files: dict, val_dir, config: dict, read_val) -> tuple[dict, dict]:
    """Training and validation files: ``val_dir``'s, or a seeded held-out fraction (at least one file)."""
    if val_dir is not None:
        return files, read_val(val_dir)
    if len(files) < 2:
        raise ValueError(f"found {len(files)} usable file(s): need at least 2 to hold one out for validation "
                         "(or give val_dir)")  # fmt: skip
    keys = list(files)
    count = max(1, round(config["val_fraction"] * len(keys)))
    held_out = set(random.Random(config["seed"]).sample(keys, count))
    return {k: v for k, v in files.items() if k not in held_out}, {k: v for k, v in files.items() if k in held_out}


def _unit_data(units_dir, val_dir, config: dict) -> tuple[_UnitLMTask, dict]:
    def find(root):
        files = datasets.find_files(root, datasets.UNIT_SUFFIXES)
        if not files:
            raise ValueError(f"no unit files (.npy, .txt) under {root}")
        return files

    train_files, val_files = _split(find(units_dir), val_dir, config, find)
    train = datasets.read_unit_corpus(list(train_files.values()), Path(units_dir), config["k"])
    val = datasets.read_unit_corpus(list(val_files.values()), Path(val_dir or units_dir), config["k"])
    if len(train) == 0 or len(val) == 0:
        raise ValueError("no training or no validation utterances (are the unit files empty?)")
    if int((val.offsets.diff() - 2).clamp(min=0).sum()) == 0:  # BOS, then a first unit the loss skips
        raise ValueError(f"no validation utterance has 2 or more units (the loss skips each one's first unit), so "
                         f"there is nothing to validate on: give longer or more validation files "
                         f"({'in ' + str(val_dir) if val_dir is not None else 'or val_dir'})")  # fmt: skip
    summary = {"train_files": len(train), "val_files": len(val), "train_tokens": len(train.ids),
               "val_tokens": len(val.ids), "train_hours": round(train.frames / 50 / 3600, 4),
               "units_per_second": round((len(train.ids) - len(train)) / max(train.frames / 50, 1e-9), 2)}  # fmt: skip
    return _UnitLMTask(config, train, val), summary


def _ellav_data(units_dir, codes_dir, val_dir, config: dict) -> tuple[_ELLAVTask, dict]:
    tokenizer = unit_tokenizer(config["k"])

    def pairs(unit_root, code_root):
        units = datasets.find_files(unit_root, datasets.UNIT_SUFFIXES)
        codes = datasets.find_files(code_root, datasets.CODE_SUFFIXES)
        matched = [key for key in units if key in codes]
        if not matched:
            raise ValueError(f"no unit file under {unit_root} has a codec file of the same relative path under {code_root}")
        if len(matched) < len(units):
            log.warning("%d unit file(s) without codes are left out", len(units) - len(matched))
        result, mismatched = {}, []
        for key in matched:
            frame_units, frame_codes = datasets.load_frame_units(units[key], config["k"]), datasets.load_codes(codes[key])
            if datasets.durations_match(len(frame_units), len(frame_codes), tokenizer) and len(frame_units):
                result[key] = (frame_units.int(), frame_codes.int())
            else:
                mismatched.append(f"{key} ({len(frame_units) / 50:.2f} s of units, {len(frame_codes) / 40:.2f} s of codes)")
        if mismatched:
            shown = "".join(f"\n  {name}" for name in [*mismatched[:10], *(["..."] if len(mismatched) > 10 else [])])
            log.warning("skipped %d file(s) whose unit and codec durations differ by more than 0.1 s:%s", len(mismatched), shown)
        return result

    train, val = _split(pairs(units_dir, codes_dir), val_dir, config, lambda d: pairs(d, codes_dir))
    if not train or not val:
        raise ValueError("no training or no validation utterances left")
    frames = sum(len(u) for u, _ in train.values())
    units = sum(len(torch.unique_consecutive(u)) for u, _ in train.values())
    summary = {"train_files": len(train), "val_files": len(val), "train_hours": round(frames / 50 / 3600, 4),
               "train_codes": sum(len(c) for _, c in train.values()),
               "units_per_second": round(units / max(frames / 50, 1e-9), 2)}  # fmt: skip
    return _ELLAVTask(config, list(train.values()), list(val.values())), summary


# -- the loop -------------------------------------------------------------------------------------


def train_ulm(units_dir, out_dir, *, k: int, preset: str = "tiny", val_dir=None, device=None, max_steps=None,
              overwrite: bool = False, progress: bool = True, **overrides) -> TrainingRun:  # fmt: skip
    """Train a unit LM on the unit files under ``units_dir`` (see :mod:`dpslm_utils.datasets`) into ``out_dir``.

    ``k``: codebook size (vocabulary k + 1). ``overrides``: any setting of :data:`PRESETS` (``lr``,
    ``batch_size``, ``grad_accum``, ``chunk_size``, ``dim``, ``n_layers``, ...). Returns the run;
    ``run.best_checkpoint`` loads with ``UnitLM.from_checkpoint``.
    """
    config = resolve_config("ulm", preset, k, {**overrides, "max_steps": max_steps})
    config |= {"units_dir": str(Path(units_dir).resolve()), "val_dir": _resolved(val_dir)}
    return _run(config, out_dir, lambda: _unit_data(units_dir, val_dir, config), device, overwrite, progress)


def train_ellav(units_dir, codes_dir, out_dir, *, k: int, preset: str = "tiny", val_dir=None, device=None,
                max_steps=None, overwrite: bool = False, progress: bool = True, **overrides) -> TrainingRun:  # fmt: skip
    """Train an ELLA-V (units -> WavTokenizer codes) on unit and codec files matched by relative path.

    ``val_dir`` holds validation unit files (their codes are looked up in ``codes_dir``). Files whose
    unit and codec durations differ by more than 0.1 s are reported and skipped. Returns the run;
    ``run.best_checkpoint`` loads with ``ELLAV.from_checkpoint``.
    """
    config = resolve_config("ellav", preset, k, {**overrides, "max_steps": max_steps})
    config |= {"units_dir": str(Path(units_dir).resolve()), "codes_dir": str(Path(codes_dir).resolve()),
               "val_dir": _resolved(val_dir)}  # fmt: skip
    return _run(config, out_dir, lambda: _ellav_data(units_dir, codes_dir, val_dir, config), device, overwrite, progress)


def _resolved(path) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _saved_config(out_dir: Path, config: dict, overwrite: bool) -> dict | None:
    """The settings of the run in ``out_dir`` (None if there is none); other settings are refused unless ``overwrite``."""
    config_path = out_dir / "config.json"
    if not config_path.exists():
        return None
    try:
        saved = json.loads(config_path.read_text())
    except ValueError as e:  # edited by hand, or not ours
        if overwrite:
            return {}
        raise ValueError(f"{config_path} is unreadable ({e}): use another folder, or overwrite=True (--overwrite) "
                         "to start over there") from e  # fmt: skip
    differences = [f"{name}: {saved.get(name)!r} there, {config.get(name)!r} now" for name in sorted(set(saved) | set(config))
                   if name not in (*RESUMABLE_CHANGES, "data", "steps_done") and saved.get(name) != config.get(name)]  # fmt: skip
    if differences and not overwrite:
        raise ValueError(f"{out_dir} holds a training run with other settings ({'; '.join(differences)}). "
                         "Use another folder, or overwrite=True (--overwrite) to start over there")  # fmt: skip
    return saved


def _prepare_out_dir(out_dir: Path, config: dict, overwrite: bool) -> None:
    """Under the folder lock: keep a run to resume (same settings and a saved state), else clear the way for a new one."""
    saved = _saved_config(out_dir, config, overwrite)
    for name in RUN_FILES:  # what a killed save left; no one else writes here while we hold the lock
        for tmp in leftover_temporaries(out_dir / name):
            tmp.unlink(missing_ok=True)
    if saved is not None and not overwrite and (out_dir / STATE_NAME).exists():
        return
    for name in RUN_FILES if overwrite else ("metrics.jsonl", STATE_NAME):
        (out_dir / name).unlink(missing_ok=True)


@contextlib.contextmanager
def _folder_lock(out_dir: Path):
    """Hold ``OUT_DIR/train.lock`` (creating OUT_DIR) while a run writes there; ValueError if another run holds it.

    The lock is the operating system's (``flock``): it ends with the process, however the process ends, so
    a lock file that a killed run left holds nothing and the next run simply takes it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK_NAME, "a+") as lock:
        try:
            if fcntl is None:
                raise OSError("no flock on this system")
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise ValueError(f"another training run ({holder}) is writing to {out_dir}: wait for it to end, "
                             "or use another folder") from None  # fmt: skip
        except OSError as e:  # Windows, or a file system without locks
            log.warning("could not lock %s (%s): do not start a second run into this folder", out_dir, e)
        lock.truncate(0)
        lock.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        yield


def _run(config: dict, out_dir, read_data, device, overwrite: bool, progress: bool) -> TrainingRun:
    check_device(device)
    dist = setup(device)
    try:
        return _train(config, Path(out_dir), read_data, dist, overwrite, progress)
    finally:
        teardown(dist)


def _train(config: dict, out_dir: Path, read_data, dist: Distributed, overwrite: bool, progress: bool) -> TrainingRun:
    _saved_config(out_dir, config, overwrite)  # every rank, before any work: other settings are refused
    task, config["data"] = read_data()  # bad data is refused before OUT_DIR is made
    run = TrainingRun(out_dir)
    with _folder_lock(out_dir) if dist.is_main else contextlib.nullcontext():
        if dist.is_main:
            _prepare_out_dir(out_dir, config, overwrite)
        barrier(dist)
        _fit(config, run, task, dist, progress)
    return run


def _fit(config: dict, run: TrainingRun, task, dist: Distributed, progress: bool) -> None:
    """Train from the state in ``run`` (if there is one) to ``max_steps``, committing a state at every evaluation."""
    fingerprint = task.fingerprint()
    state = _read_state(run.state_file, dist, fingerprint) if run.state_file.exists() else None

    torch.manual_seed(_seed(config["seed"], 0, 2))  # PyTorch's default initialisation, as the originals
    args = ModelArgs(**_model_sizes(config), vocab_size=task.vocab_size)
    model = Transformer(args, output_bias=task.output_bias, dropout=config["dropout"]).to(dist.device)
    torch.manual_seed(_seed(config["seed"], dist.rank, 3))  # each rank its own dropout masks
    loss_module: nn.Module = _PackedLoss(model, task.ignore_index)
    if dist.enabled:
        loss_module = nn.parallel.DistributedDataParallel(loss_module, device_ids=[dist.device] if dist.device.type == "cuda" else None)  # fmt: skip
    optimizer = _optimizer(model, config, dist.device)
    step, tokens_seen, best_val, best_step, saved_step = 0, 0, float("inf"), 0, None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, tokens_seen, best_val, best_step = state["step"], state["tokens"], state["best_val_loss"], state["best_step"]
        saved_step = step
        _set_rng(state["rng"][dist.rank])
        if dist.is_main:
            log.info("resuming %s from step %d (best validation loss so far %.4f)", run.out_dir, step, best_val)
            _truncate_metrics(run.out_dir / "metrics.jsonl", step)
            _export(task, model, run, best=best_step == step)  # a kill after the commit may have cut the export short
    if dist.is_main:
        _write_config(run.out_dir, config, step)
        params = sum(p.numel() for p in model.parameters())
        log.info("%s (%s): %.2fM parameters on %s%s; data %s", config["task"], config["preset"], params / 1e6, dist.device,
                 f" x {dist.world_size} processes" if dist.enabled else "", config["data"])  # fmt: skip

    batches = _Batches(task, config)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dist.device.type == "cuda"
                else contextlib.nullcontext())  # fmt: skip
    accum, world = config["grad_accum"], dist.world_size
    bar = _progress(progress and dist.is_main, step, config["max_steps"], config["task"])
    window_loss, window_tokens, window_start = [], 0, time.perf_counter()
    while step < config["max_steps"]:
        lr = learning_rate(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        step_loss, step_tokens = torch.zeros((), device=dist.device), 0
        for micro in range(accum):
            batch = batches[(step * accum + micro) * world + dist.rank].to(dist.device)
            sync = contextlib.nullcontext() if not dist.enabled or micro == accum - 1 else loss_module.no_sync()
            with sync:  # DDP averages the gradients across ranks at the last micro-batch only
                with autocast:
                    loss, _ = loss_module(batch.src_ids, batch.tgt_ids, batch.loss_mask, batch.seqlens)
                (loss / accum).backward()
            step_loss += loss.detach() / accum
            step_tokens += batch.num_tokens
        if config["grad_clip"]:
            nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        summed = _all_reduce(dist, torch.stack([step_loss.float(), torch.tensor(float(step_tokens), device=dist.device)]))
        tokens_seen += int(summed[1])
        window_loss.append(float(summed[0]) / world)
        window_tokens += int(summed[1])
        _stop_unless_finite("training loss", window_loss[-1], step, run, saved_step)  # every rank sees the same sum
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{window_loss[-1]:.3f}", tok_s=f"{window_tokens / (time.perf_counter() - window_start):.0f}")

        evaluate = step % config["eval_interval"] == 0 or step == config["max_steps"]
        if step % config["log_interval"] == 0 or evaluate:
            record = {"step": step, "tokens": tokens_seen, "train_loss": sum(window_loss) / len(window_loss),
                      "lr": lr, "tokens_per_s": window_tokens / (time.perf_counter() - window_start)}  # fmt: skip
            if evaluate:
                record["val_loss"] = validation_loss(model, task, dist)
                _stop_unless_finite("validation loss", record["val_loss"], step, run, saved_step)
            if dist.is_main:
                _append_metrics(run.out_dir / "metrics.jsonl", record)
            if evaluate:
                if record["val_loss"] < best_val:
                    best_val, best_step = record["val_loss"], step
                rng = _gather_rng(dist)
                if dist.is_main:
                    _commit(run, {"step": step, "tokens": tokens_seen, "best_val_loss": best_val, "best_step": best_step,
                                  "world_size": dist.world_size, "data_fingerprint": fingerprint, "rng": rng,
                                  "model": _on_cpu(model.state_dict()), "optimizer": optimizer.state_dict()})  # fmt: skip
                    _export(task, model, run, best=best_step == step)
                    _write_config(run.out_dir, config, step)
                    if bar is not None:
                        bar.write(f"step {step}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}")
                saved_step = step
            window_loss, window_tokens, window_start = [], 0, time.perf_counter()
    if bar is not None:
        bar.close()
    barrier(dist)


def _stop_unless_finite(what: str, value: float, step: int, run: TrainingRun, saved_step: int | None) -> None:
    if math.isfinite(value):
        return
    kept = f"{run.state_file} still holds step {saved_step}" if saved_step is not None else "nothing was saved"
    raise TrainingDiverged(f"the {what} is {value} at step {step}, so training stopped ({kept}). Lower lr (--lr) or "
                           "lengthen warmup_steps (--warmup-steps), and start over (--overwrite) or in another folder")  # fmt: skip


def _commit(run: TrainingRun, state: dict) -> None:
    """Save ``state`` (:data:`STATE_KEYS`) to ``train_state.pt``: the rename that commits a save, the one file a resume reads."""
    save_atomically(state, run.state_file)


def _export(task, model: Transformer, run: TrainingRun, best: bool) -> None:
    """Write the committed weights as ``last.pt`` (and ``best.pt`` if they are the best so far) in the official layout."""
    checkpoint = _on_cpu(task.checkpoint(model))
    for path in (run.best_checkpoint, run.last_checkpoint) if best else (run.last_checkpoint,):
        save_atomically(checkpoint, path)


def _read_state(path: Path, dist: Distributed, fingerprint: str) -> dict:
    """The committed state to resume from; ValueError if it is unreadable, or was saved on another number of
    processes or from other data than ``fingerprint``'s."""
    try:
        state = load_checkpoint(path)  # weights_only=True: nothing in it runs
    except CheckpointError as e:
        raise ValueError(f"{e}. It cannot be resumed from: start over with overwrite=True (--overwrite)") from e
    missing = [key for key in STATE_KEYS if key not in state] if isinstance(state, dict) else list(STATE_KEYS)
    if missing:
        raise ValueError(f"{path} lacks {missing}: not a training state of this version of dpslm-utils. "
                         "Start over with overwrite=True (--overwrite)")  # fmt: skip
    if state["world_size"] != dist.world_size:
        raise ValueError(f"{path} was saved by a run on {state['world_size']} process(es), this one has {dist.world_size}: "
                         "the batches of a step depend on it. Resume with as many (torchrun --nproc-per-node "
                         f"{state['world_size']}), or start over with overwrite=True (--overwrite)")  # fmt: skip
    if state["data_fingerprint"] != fingerprint:
        raise ValueError(f"the training data changed since {path} was saved (data fingerprint {state['data_fingerprint'][:12]} "
                         f"then, {fingerprint[:12]} now): resuming would mix two data sets. Restore the data, or start "
                         "over with overwrite=True (--overwrite) or in another folder")  # fmt: skip
    return state


def _optimizer(model: Transformer, config: dict, device: torch.device) -> torch.optim.AdamW:
    """AdamW on every parameter, as the originals (weight decay on all of them)."""
    return torch.optim.AdamW(model.parameters(), lr=config["lr"], betas=(config["beta1"], config["beta2"]),
                             weight_decay=config["weight_decay"], eps=config["eps"],
                             fused=device.type == "cuda")  # fmt: skip


@torch.no_grad()
def validation_loss(model: Transformer, task, dist: Distributed) -> float:
    """Mean cross-entropy over every counted validation target (all ranks together)."""
    model.eval()
    loss_fn = _PackedLoss(model, task.ignore_index)
    totals = torch.zeros(2, device=dist.device, dtype=torch.float64)
    for batch in task.val_batches(dist.rank, dist.world_size):
        batch = batch.to(dist.device)
        with (torch.autocast("cuda", dtype=torch.bfloat16) if dist.device.type == "cuda" else contextlib.nullcontext()):
            loss, count = loss_fn(batch.src_ids, batch.tgt_ids, batch.loss_mask, batch.seqlens)
        totals += torch.stack([loss.double() * count, count.double()])
    totals = _all_reduce(dist, totals)
    model.train()
    if totals[1] == 0:  # the data readers refuse such a validation set; a mean of nothing is no loss
        raise RuntimeError("the validation set has no target the loss counts")
    return float(totals[0] / totals[1])


def _all_reduce(dist: Distributed, tensor: torch.Tensor) -> torch.Tensor:
    if dist.enabled:
        torch.distributed.all_reduce(tensor)
    return tensor


def _gather_rng(dist: Distributed) -> list[dict]:
    """Every rank's random state (dropout), so a resumed run draws as the uninterrupted one."""
    state = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if dist.device.type == "cuda" else None}
    if not dist.enabled:
        return [state]
    gathered: list = [None] * dist.world_size
    torch.distributed.all_gather_object(gathered, state)
    return gathered


def _set_rng(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _write_config(out_dir: Path, config: dict, steps_done: int) -> None:
    text = json.dumps({**config, "steps_done": steps_done}, indent=2) + "\n"
    write_atomically(out_dir / "config.json", lambda tmp: tmp.write_text(text))


def _append_metrics(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}) + "\n")


def _metric_lines(path: Path) -> list[tuple[str, dict]]:
    """``(line, record)`` of every line of ``metrics.jsonl``, leaving out a last line that a kill cut short.

    Raises ValueError naming the file and line for any other line that is not a record with a ``step``.
    """
    if not path.exists():
        return []
    *lines, unfinished = path.read_text().split("\n")  # every complete line ends with "\n"
    if unfinished:
        log.warning("%s: left out its last line, which a killed run cut short: %r", path, unfinished[:80])
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line) if line else None
        except ValueError as e:
            raise ValueError(f"{path}, line {number}: not a metrics record ({e})") from e
        if line and (not isinstance(record, dict) or "step" not in record):
            raise ValueError(f"{path}, line {number}: not a metrics record (it has no step)")
        if line:
            records.append((line, record))
    return records


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the saved step (they will be logged again), and a last line a kill cut short."""
    lines = [line for line, record in _metric_lines(path) if record["step"] <= step]
    if path.exists():
        write_atomically(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in lines)))


def _progress(enabled: bool, initial: int, total: int, description: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"train {description}", unit="step")
