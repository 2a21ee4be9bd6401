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
micro-batches one process with ``N x grad_accum`` would see. Rank 0 writes every file, and every rank
waits for each of its writes (:func:`~dpslm_utils.distributed.on_main`): if one fails, every rank
raises rank 0's error. The data order is a function of ``seed`` and the step (a seeded shuffle per
epoch, seeded chunk starts), so a resumed run sees the batches the uninterrupted one would have seen.

The code: a model family gives the loop a :class:`Task` (data, loss, checkpoint layout:
:class:`~dpslm_utils.ulm.UnitLMTask`, :class:`~dpslm_utils.ellav.ELLAVTask`); :class:`TrainingRun`
owns OUT_DIR (settings, lock, state, metrics, saves); ``_train`` is the loop: restore, then
``_train_step`` to ``max_steps``, logging, evaluating and saving on the way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from . import ellav, ulm
from .batches import PackedBatch, derived_seed
from .checkpoints import CheckpointError, leftover_temporaries, load_checkpoint, save_atomically, write_atomically
from .checks import MAX_SEED, check_device, check_int, check_real
from .datasets import MAX_K
from .distributed import Distributed, on_main, setup, teardown
from .settings_record import SettingsMismatch, recorded_settings
from .transformer import RELEASED_DIMS, ModelArgs, Transformer

try:
    import fcntl  # the folder lock (POSIX)
except ImportError:  # Windows
    fcntl = None

# fmt: off
_TINY_MODEL = dict(dim=96, n_layers=2, head_dim=24, hidden_dim=256, n_heads=4, n_kv_heads=4,
                   norm_eps=1e-6, rope_theta=10000.0)
_SHARED = dict(lr_init=1e-7, lr_final=1e-5, beta1=0.9, beta2=0.999, grad_clip=1.0, val_fraction=0.02, seed=0)
PRESETS: dict[str, dict[str, dict]] = {
    "ulm": {
        "released": dict(RELEASED_DIMS, dropout=0.15, batch_size=12, grad_accum=8, chunk_size=1024, lr=5e-4,
                         warmup_steps=2000, decay_steps=8000, max_steps=10000, weight_decay=0.05, eps=1e-8,
                         eval_interval=1000, log_interval=10, **_SHARED),
        "tiny": dict(_TINY_MODEL, dropout=0.1, batch_size=16, grad_accum=1, chunk_size=128, lr=3e-3,
                     warmup_steps=20, decay_steps=280, max_steps=300, weight_decay=0.05, eps=1e-8,
                     eval_interval=50, log_interval=10, **dict(_SHARED, lr_final=1e-4)),
    },
    "ellav": {
        "released": dict(RELEASED_DIMS, dropout=0.0, batch_size=8, grad_accum=8, chunk_size=0, lr=5e-4,
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


class Task(Protocol):
    """What a model family gives the loop: :class:`~dpslm_utils.ulm.UnitLMTask`, :class:`~dpslm_utils.ellav.ELLAVTask`."""

    vocab_size: int
    output_bias: bool  # ELLA-V's output projection has a bias, the unit LM's none
    ignore_index: int  # targets the loss never counts
    summary: dict  # the data, as config.json records it

    def num_items(self) -> int:
        """Training items (utterances) in one epoch."""

    def fingerprint(self) -> str:
        """A hash of the training and validation data: a resume refuses other data."""

    def batch(self, epoch: int, items: torch.Tensor) -> PackedBatch:
        """The micro-batch of training items ``items [B]`` (indices) in ``epoch``."""

    def val_batches(self, rank: int, world_size: int) -> Iterator[PackedBatch]:
        """Rank ``rank``'s share of the validation set."""

    def checkpoint(self, model: Transformer) -> dict:
        """``model`` in the family's official checkpoint layout."""


@dataclass
class TrainingRun:
    """A training output folder: its settings, metrics and checkpoints.

    Training writes it through the methods below, from rank 0: :meth:`check_settings`, :meth:`lock` and
    :meth:`prepare`, then :meth:`read_state` and :meth:`resume` (every rank reads), :meth:`record` and
    :meth:`save` (one commit point per save).
    """

    out_dir: Path

    @property
    def config(self) -> dict:
        return json.loads((self.out_dir / "config.json").read_text())

    @property
    def metrics(self) -> list[dict]:
        """The lines of ``metrics.jsonl``: ``step``, ``tokens``, ``train_loss``, ``lr``, ``tokens_per_s`` (+ ``val_loss``)."""
        return [record for _, record in self._metric_lines()]

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

    # -- writing, from the training loop ----------------------------------------------------------

    def check_settings(self, config: dict, overwrite: bool) -> bool:
        """Whether the folder holds a run (``config.json``); a run of other settings is refused unless ``overwrite``."""
        try:
            return recorded_settings(self.out_dir / "config.json", config, "a training run with other settings",
                                     "use another folder, or overwrite=True (--overwrite) to start over there",
                                     (*RESUMABLE_CHANGES, "data", "steps_done")) is not None  # fmt: skip
        except SettingsMismatch:  # other settings, or a config.json edited by hand or not ours
            if overwrite:
                return True
            raise

    @contextlib.contextmanager
    def lock(self):
        """Hold ``OUT_DIR/train.lock`` (creating OUT_DIR) while a run writes there; ValueError if another run holds it.

        The lock is the operating system's (``flock``): it ends with the process, however the process ends, so
        a lock file that a killed run left holds nothing and the next run simply takes it.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / LOCK_NAME, "a+") as lock:
            try:
                if fcntl is None:
                    raise OSError("no flock on this system")
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "another process"
                raise ValueError(f"another training run ({holder}) is writing to {self.out_dir}: wait for it to end, "
                                 "or use another folder") from None  # fmt: skip
            except OSError as e:  # Windows, or a file system without locks
                log.warning("could not lock %s (%s): do not start a second run into this folder", self.out_dir, e)
            lock.truncate(0)
            lock.write(f"process {os.getpid()} on {socket.gethostname()}\n")
            lock.flush()
            yield

    def prepare(self, config: dict, overwrite: bool) -> None:
        """Under the lock: keep a run to resume (same settings and a saved state), else clear the way for a new one."""
        holds_run = self.check_settings(config, overwrite)
        for name in RUN_FILES:  # what a killed save left; no one else writes here while we hold the lock
            for tmp in leftover_temporaries(self.out_dir / name):
                tmp.unlink(missing_ok=True)
        if holds_run and not overwrite and self.state_file.exists():
            return
        for name in RUN_FILES if overwrite else ("metrics.jsonl", STATE_NAME):
            (self.out_dir / name).unlink(missing_ok=True)

    def read_state(self, world_size: int, fingerprint: str) -> dict | None:
        """The committed state to resume from (None for a new run); ValueError if it is unreadable, or was saved
        on another number of processes or from other data than ``fingerprint``'s."""
        path = self.state_file
        if not path.exists():
            return None
        try:
            state = load_checkpoint(path)  # weights_only=True: nothing in it runs
        except CheckpointError as e:
            raise ValueError(f"{e}. It cannot be resumed from: start over with overwrite=True (--overwrite)") from e
        missing = [key for key in STATE_KEYS if key not in state] if isinstance(state, dict) else list(STATE_KEYS)
        if missing:
            raise ValueError(f"{path} lacks {missing}: not a training state of this version of dpslm-utils. "
                             "Start over with overwrite=True (--overwrite)")  # fmt: skip
        if state["world_size"] != world_size:
            raise ValueError(f"{path} was saved by a run on {state['world_size']} process(es), this one has {world_size}: "
                             "the batches of a step depend on it. Resume with as many (torchrun --nproc-per-node "
                             f"{state['world_size']}), or start over with overwrite=True (--overwrite)")  # fmt: skip
        if state["data_fingerprint"] != fingerprint:
            raise ValueError(f"the training data changed since {path} was saved (data fingerprint {state['data_fingerprint'][:12]} "
                             f"then, {fingerprint[:12]} now): resuming would mix two data sets. Restore the data, or start "
                             "over with overwrite=True (--overwrite) or in another folder")  # fmt: skip
        return state

    def resume(self, state: dict, checkpoint: dict) -> None:
        """Go on from the committed ``state``: drop the metrics logged after it (they will be logged again) and export
        its weights ``checkpoint`` again (a kill after the commit may have cut the export short)."""
        log.info("resuming %s from step %d (best validation loss so far %.4f)", self.out_dir, state["step"], state["best_val_loss"])
        lines = [line for line, record in self._metric_lines() if record["step"] <= state["step"]]
        path = self.out_dir / "metrics.jsonl"
        if path.exists():
            write_atomically(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in lines)))
        self._export(checkpoint, best=state["best_step"] == state["step"])

    def record(self, record: dict) -> None:
        """Append one line to ``metrics.jsonl``."""
        with (self.out_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}) + "\n")

    def save(self, state: dict, checkpoint: dict, config: dict) -> None:
        """Commit ``state`` (:data:`STATE_KEYS`) to ``train_state.pt``, the rename that commits a save and the one file a
        resume reads; then export its weights ``checkpoint`` and record the step in ``config.json``."""
        save_atomically(state, self.state_file)
        self._export(checkpoint, best=state["best_step"] == state["step"])
        self.write_config(config, state["step"])

    def write_config(self, config: dict, steps_done: int) -> None:
        text = json.dumps({**config, "steps_done": steps_done}, indent=2) + "\n"
        write_atomically(self.out_dir / "config.json", lambda tmp: tmp.write_text(text))

    def _export(self, checkpoint: dict, best: bool) -> None:
        """The committed weights as ``last.pt`` (and ``best.pt`` if they are the best so far), in the official layout."""
        for path in (self.best_checkpoint, self.last_checkpoint) if best else (self.last_checkpoint,):
            save_atomically(checkpoint, path)

    def _metric_lines(self) -> list[tuple[str, dict]]:
        """``(line, record)`` of every line of ``metrics.jsonl``, leaving out a last line that a kill cut short.

        Raises ValueError naming the file and line for any other line that is not a record with a ``step``.
        """
        path = self.out_dir / "metrics.jsonl"
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
    k = check_int("k (the codebook size)", k, 1, MAX_K)
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
    return {name: config[name] for name in RELEASED_DIMS}


# -- the entry points -----------------------------------------------------------------------------


def train_ulm(units_dir, out_dir, *, k: int, preset: str = "tiny", val_dir=None, device=None, max_steps=None,
              overwrite: bool = False, progress: bool = True, **overrides) -> TrainingRun:  # fmt: skip
    """Train a unit LM on the unit files under ``units_dir`` (see :mod:`dpslm_utils.datasets`) into ``out_dir``.

    ``k``: codebook size (vocabulary k + 1). ``overrides``: any setting of :data:`PRESETS` (``lr``,
    ``batch_size``, ``grad_accum``, ``chunk_size``, ``dim``, ``n_layers``, ...). Returns the run;
    ``run.best_checkpoint`` loads with ``UnitLM.from_checkpoint``.
    """
    config = resolve_config("ulm", preset, k, {**overrides, "max_steps": max_steps})
    config |= {"units_dir": str(Path(units_dir).resolve()), "val_dir": _resolved(val_dir)}
    return _run(config, out_dir, lambda: ulm.UnitLMTask.from_folders(config, units_dir, val_dir), device, overwrite, progress)


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
    read_task = lambda: ellav.ELLAVTask.from_folders(config, units_dir, codes_dir, val_dir)  # noqa: E731
    return _run(config, out_dir, read_task, device, overwrite, progress)


def _resolved(path) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _run(config: dict, out_dir, read_task: Callable[[], Task], device, overwrite: bool, progress: bool) -> TrainingRun:
    """Check the settings and read the data (every rank), then let rank 0 prepare ``out_dir`` and train into it."""
    check_device(device)
    dist = setup(device)
    run = TrainingRun(Path(out_dir))
    try:
        run.check_settings(config, overwrite)  # every rank, before any work: other settings are refused
        task = read_task()  # bad data is refused before OUT_DIR is made
        config["data"] = task.summary
        with contextlib.ExitStack() as lock:
            def prepare() -> None:  # rank 0 holds the lock until training ends; every rank learns if this failed
                lock.enter_context(run.lock())
                run.prepare(config, overwrite)

            on_main(dist, prepare)
            _train(config, run, task, dist, progress)
    finally:
        teardown(dist)
    return run


# -- the loop -------------------------------------------------------------------------------------


@dataclass
class _Progress:
    """Where training stands (what a save commits besides weights, optimizer and random states)."""

    step: int = 0
    tokens: int = 0
    best_val_loss: float = math.inf
    best_step: int = 0
    saved_step: int | None = None  # the step train_state.pt holds


def _train(config: dict, run: TrainingRun, task: Task, dist: Distributed, progress: bool) -> None:
    """Train from the state committed in ``run`` (if there is one) to ``max_steps``, saving at every evaluation."""
    fingerprint = task.fingerprint()
    state = run.read_state(dist.world_size, fingerprint)  # every rank; None for a new run
    model, loss_fn, optimizer = _build(config, task, dist)
    at = _restore(state, model, optimizer, dist)
    on_main(dist, _begin, run, config, state, task, model, dist)
    batches, window = _Batches(task, config), _Window()
    bar = _progress_bar(progress and dist.is_main, at.step, config["max_steps"], config["task"])
    while at.step < config["max_steps"]:
        lr = learning_rate(at.step, config)
        loss, tokens = _train_step(model, loss_fn, optimizer, batches, at.step, lr, config, dist)
        at.step, at.tokens = at.step + 1, at.tokens + tokens
        window.add(loss, tokens)
        _stop_unless_finite("training loss", loss, at, run)  # every rank sees the same sum
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{window.tokens_per_s():.0f}")

        evaluate = at.step % config["eval_interval"] == 0 or at.step == config["max_steps"]
        if at.step % config["log_interval"] == 0 or evaluate:
            record, snapshot = window.record(at, lr), None
            if evaluate:
                record["val_loss"] = validation_loss(model, task, dist)
                _stop_unless_finite("validation loss", record["val_loss"], at, run)
                if record["val_loss"] < at.best_val_loss:
                    at.best_val_loss, at.best_step = record["val_loss"], at.step
                rng = _gather_rng(dist)  # a collective: every rank takes part
                snapshot = _state(at, dist, fingerprint, rng, model, optimizer) if dist.is_main else None  # rank 0 saves
            on_main(dist, _log_and_save, run, record, snapshot, task, model, config, bar)
            at.saved_step = at.step if evaluate else at.saved_step
            window = _Window()
    if bar is not None:
        bar.close()


def _train_step(model: Transformer, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, batches: _Batches,
                step: int, lr: float, config: dict, dist: Distributed) -> tuple[float, int]:  # fmt: skip
    """One optimizer step, ``grad_accum`` micro-batches per rank: ``(mean loss, tokens)`` over every rank."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    accum, world = config["grad_accum"], dist.world_size
    step_loss, step_tokens = torch.zeros((), device=dist.device), 0
    for micro in range(accum):
        batch = batches[(step * accum + micro) * world + dist.rank].to(dist.device)
        sync = contextlib.nullcontext() if not dist.enabled or micro == accum - 1 else loss_fn.no_sync()
        with sync:  # DDP averages the gradients across ranks at the last micro-batch only
            with _autocast(dist.device):
                loss, _ = loss_fn(batch.src_ids, batch.tgt_ids, batch.loss_mask, batch.seqlens)
            (loss / accum).backward()
        step_loss += loss.detach() / accum
        step_tokens += batch.num_tokens
    if config["grad_clip"]:
        nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    summed = _all_reduce(dist, torch.stack([step_loss.float(), torch.tensor(float(step_tokens), device=dist.device)]))
    return float(summed[0]) / world, int(summed[1])


def _build(config: dict, task: Task, dist: Distributed) -> tuple[Transformer, nn.Module, torch.optim.AdamW]:
    """The model (PyTorch's default initialisation, as the originals), its loss (under DDP with torchrun) and AdamW."""
    torch.manual_seed(derived_seed(config["seed"], 0, 2))
    args = ModelArgs(**_model_sizes(config), vocab_size=task.vocab_size)
    model = Transformer(args, output_bias=task.output_bias, dropout=config["dropout"]).to(dist.device)
    torch.manual_seed(derived_seed(config["seed"], dist.rank, 3))  # each rank its own dropout masks
    loss_fn: nn.Module = _PackedLoss(model, task.ignore_index)
    if dist.enabled:
        loss_fn = nn.parallel.DistributedDataParallel(loss_fn, device_ids=[dist.device] if dist.device.type == "cuda" else None)  # fmt: skip
    return model, loss_fn, _optimizer(model, config, dist.device)


def _restore(state: dict | None, model: Transformer, optimizer: torch.optim.Optimizer, dist: Distributed) -> _Progress:
    """The committed ``state`` loaded into ``model``, ``optimizer`` and this rank's random generators."""
    if state is None:
        return _Progress()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    _set_rng(state["rng"][dist.rank])
    return _Progress(state["step"], state["tokens"], state["best_val_loss"], state["best_step"], saved_step=state["step"])


def _begin(run: TrainingRun, config: dict, state: dict | None, task: Task, model: Transformer, dist: Distributed) -> None:
    """Rank 0, before the first step: resume the folder's bookkeeping, record the settings, say what trains."""
    if state is not None:
        run.resume(state, _on_cpu(task.checkpoint(model)))
    run.write_config(config, state["step"] if state is not None else 0)
    params = sum(p.numel() for p in model.parameters())
    log.info("%s (%s): %.2fM parameters on %s%s; data %s", config["task"], config["preset"], params / 1e6, dist.device,
             f" x {dist.world_size} processes" if dist.enabled else "", config["data"])  # fmt: skip


def _log_and_save(run: TrainingRun, record: dict, state: dict | None, task: Task, model: Transformer, config: dict,
                  bar) -> None:  # fmt: skip
    """Rank 0, at a log step: the metrics line, then (at an evaluation) the save."""
    run.record(record)
    if state is not None:
        run.save(state, _on_cpu(task.checkpoint(model)), config)
        if bar is not None:
            bar.write(f"step {record['step']}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}")


def _state(at: _Progress, dist: Distributed, fingerprint: str, rng: list[dict], model: Transformer, optimizer) -> dict:
    """What ``train_state.pt`` commits (:data:`STATE_KEYS`), with every rank's random state ``rng``."""
    return {"step": at.step, "tokens": at.tokens, "best_val_loss": at.best_val_loss, "best_step": at.best_step,
            "world_size": dist.world_size, "data_fingerprint": fingerprint, "rng": rng,
            "model": _on_cpu(model.state_dict()), "optimizer": optimizer.state_dict()}  # fmt: skip


class _Window:
    """The training losses and tokens since the last metrics line."""

    def __init__(self):
        self.losses: list[float] = []
        self.tokens, self.start = 0, time.perf_counter()

    def add(self, loss: float, tokens: int) -> None:
        self.losses.append(loss)
        self.tokens += tokens

    def tokens_per_s(self) -> float:
        return self.tokens / (time.perf_counter() - self.start)

    def record(self, at: _Progress, lr: float) -> dict:
        return {"step": at.step, "tokens": at.tokens, "train_loss": sum(self.losses) / len(self.losses), "lr": lr,
                "tokens_per_s": self.tokens_per_s()}  # fmt: skip


def _stop_unless_finite(what: str, value: float, at: _Progress, run: TrainingRun) -> None:
    if math.isfinite(value):
        return
    kept = f"{run.state_file} still holds step {at.saved_step}" if at.saved_step is not None else "nothing was saved"
    raise TrainingDiverged(f"the {what} is {value} at step {at.step}, so training stopped ({kept}). Lower lr (--lr) or "
                           "lengthen warmup_steps (--warmup-steps), and start over (--overwrite) or in another folder")  # fmt: skip


def _on_cpu(value):
    """``value`` (a checkpoint: nested dicts) with every tensor on the CPU, so any machine loads the file."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return {key: _on_cpu(item) for key, item in value.items()} if isinstance(value, dict) else value


class _Batches:
    """Micro-batch ``g`` of the endless stream: epoch ``g // per_epoch``, each epoch a seeded shuffle."""

    def __init__(self, task: Task, config: dict):
        self.task, self.config = task, config
        self.per_epoch = math.ceil(task.num_items() / config["batch_size"])
        self._order: tuple[int, torch.Tensor] | None = None

    def __getitem__(self, index: int) -> PackedBatch:
        epoch, position = divmod(index, self.per_epoch)
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(derived_seed(self.config["seed"], epoch, 0))
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


def _optimizer(model: Transformer, config: dict, device: torch.device) -> torch.optim.AdamW:
    """AdamW on every parameter, as the originals (weight decay on all of them)."""
    return torch.optim.AdamW(model.parameters(), lr=config["lr"], betas=(config["beta1"], config["beta2"]),
                             weight_decay=config["weight_decay"], eps=config["eps"],
                             fused=device.type == "cuda")  # fmt: skip


def _autocast(device: torch.device):
    """bf16 autocast on CUDA, float32 elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def validation_loss(model: Transformer, task: Task, dist: Distributed) -> float:
    """Mean cross-entropy over every counted validation target (all ranks together)."""
    model.eval()
    loss_fn = _PackedLoss(model, task.ignore_index)
    totals = torch.zeros(2, device=dist.device, dtype=torch.float64)
    for batch in task.val_batches(dist.rank, dist.world_size):
        batch = batch.to(dist.device)
        with _autocast(dist.device):
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


def _progress_bar(enabled: bool, initial: int, total: int, description: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"train {description}", unit="step")
