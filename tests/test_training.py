"""Training: the originals' data, objective and schedule (fixtures), learning on synthetic data, resume, DDP."""

import json
import logging
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dpslm_utils
from dpslm_utils import datasets, distributed, ellav, training, ulm
from dpslm_utils.batches import PackedBatch
from dpslm_utils.ellav import unit_tokenizer
from dpslm_utils.settings_record import SettingsMismatch, check_settings

from conftest import FIXTURES, RunsCode, free_port, load_fixture

TINY = dict(dim=32, n_layers=2, head_dim=16, hidden_dim=64, n_heads=2, n_kv_heads=2, dropout=0.0)
"""Smaller than the tiny preset, for the tests that check bookkeeping rather than learning."""


# -- fixtures from the originals ------------------------------------------------------------------


def test_tokens_and_chunks_match_the_original():
    fixture = load_fixture("ulm_train_fixture.pt")
    tokenized = [ulm.tokenize_units(torch.tensor(u)) for u in fixture["utterances_framewise"]]
    for ours, theirs in zip(tokenized, fixture["tokenized"], strict=True):
        assert torch.equal(ours, theirs)
    corpus = ulm.UnitCorpus.from_utterances(tokenized, fixture["chapters"])
    for case in fixture["chunks"]:  # incl. chunks that stop at a chapter boundary and at the corpus end
        assert torch.equal(corpus.chunk(case["index"], case["start"], case["chunk_size"]), case["ids"])


def test_packed_batch_loss_matches_the_original():
    fixture = load_fixture("ulm_train_fixture.pt")["batch"]
    items = fixture["items"]
    batch = PackedBatch.pack(items, [ulm.chunk_loss_mask(len(i)) for i in items])
    assert torch.equal(batch.src_ids, fixture["src_ids"]) and torch.equal(batch.tgt_ids, fixture["tgt_ids"])
    assert torch.equal(batch.loss_mask, fixture["loss_mask"]) and batch.seqlens == fixture["seqlens"]
    model = dpslm_utils.UnitLM.from_checkpoint(FIXTURES / "ulm_tiny.pt").transformer
    logits = model.forward_packed(batch.src_ids, batch.seqlens)
    nll = F.cross_entropy(logits, batch.tgt_ids, reduction="none")
    torch.testing.assert_close(nll, fixture["per_token_nll"], rtol=0, atol=1e-4)
    loss, count = training._PackedLoss(model, -100)(batch.src_ids, batch.tgt_ids, batch.loss_mask, batch.seqlens)
    assert int(count) == int(fixture["loss_mask"].sum())
    assert abs(loss.item() - fixture["loss"].item()) <= 1e-5 * fixture["loss"].item()


def test_learning_rate_schedule_matches_the_original():
    fixture = load_fixture("ulm_train_fixture.pt")["lr_schedule"]
    config = training.resolve_config("ulm", "released", 500, {})
    source = fixture["config"]
    assert (config["warmup_steps"], config["decay_steps"]) == (source["n_linear_steps"], source["n_decay_steps"])
    assert (config["lr_init"], config["lr"], config["lr_final"]) == (source["lr_init"], source["lr_max"], source["lr_final"])
    for step, lr in fixture["lr_at_step"].items():
        assert training.learning_rate(step, config) == pytest.approx(lr, rel=1e-12)


def test_ellav_examples_match_the_original_encode_train():
    fixture = load_fixture("ellav_train_fixture.pt")
    tokenizer = dpslm_utils.ELLAV.from_checkpoint(FIXTURES / "ellav_tiny.pt").tokenizer
    for case in fixture["cases"]:  # case 2 holds a codec id >= 4096: UNK
        example = ellav.ellav_example(case["frame_units"], case["codes"], tokenizer)
        assert torch.equal(example.ids, case["ids"]) and torch.equal(example.loss_mask, case["loss_mask"])
        numbers = ellav.ellav_example([int(u[1:]) for u in case["frame_units"]], case["codes"], tokenizer)
        assert torch.equal(numbers.ids, case["ids"])  # framewise ints give the same example
    # The quirk: the lowest unit id (u0) is predicted by the loss, every other unit is user input.
    u0, u1 = tokenizer["token_to_id_dict"]["u0"], tokenizer["token_to_id_dict"]["u1"]
    targets = torch.cat([c["ids"][1:] for c in fixture["cases"][:2]])
    mask = torch.cat([c["loss_mask"] for c in fixture["cases"][:2]])
    assert (targets == u0).any() and mask[targets == u0].all()
    assert (targets == u1).any() and not mask[targets == u1].any()


def test_ellav_batch_loss_matches_the_original():
    fixture = load_fixture("ellav_train_fixture.pt")
    model = dpslm_utils.ELLAV.from_checkpoint(FIXTURES / "ellav_tiny.pt")
    cases = [fixture["cases"][i] for i in fixture["batch"]["case_indices"]]
    examples = [ellav.ellav_example(c["frame_units"], c["codes"], model.tokenizer) for c in cases]
    batch = PackedBatch.pack([e.ids for e in examples], [e.loss_mask for e in examples])
    assert torch.equal(batch.src_ids, fixture["batch"]["src_ids"]) and batch.seqlens == fixture["batch"]["seqlens"]
    loss, _ = training._PackedLoss(model.transformer, model.tokenizer["UNK_id"])(
        batch.src_ids, batch.tgt_ids, batch.loss_mask, batch.seqlens
    )
    expected = fixture["batch"]["loss"].item()
    assert abs(loss.item() - expected) <= 1e-5 * expected


def test_dropout_is_active_in_training_only_and_adds_no_parameters():
    reference = dpslm_utils.UnitLM.from_checkpoint(FIXTURES / "ulm_tiny.pt").transformer
    model = dpslm_utils.transformer.Transformer(reference.args, dropout=0.5)
    model.load_state_dict(reference.state_dict())  # strict: same keys
    tokens = torch.tensor([[0, 5, 9, 3, 7, 1]])
    torch.testing.assert_close(model.eval()(tokens), reference(tokens), rtol=0, atol=0)
    assert not torch.allclose(model.train()(tokens), reference(tokens))


# -- files ----------------------------------------------------------------------------------------


def test_unit_files_in_every_accepted_format(tmp_path):
    units, durations = torch.tensor([3, 7, 3]), torch.tensor([2, 1, 3])
    frames = [3, 3, 7, 3, 3, 3]
    datasets.save_units(tmp_path / "table.npy", units, durations)
    np.save(tmp_path / "framewise.npy", np.array(frames, dtype=np.int32))
    (tmp_path / "framewise.txt").write_text(" ".join(f"u{u}" for u in frames))
    for name in ("table.npy", "framewise.npy", "framewise.txt"):
        assert datasets.load_frame_units(tmp_path / name).tolist() == frames
    assert np.load(tmp_path / "table.npy").dtype == np.int64
    with pytest.raises(ValueError, match="differ in length"):
        datasets.save_units(tmp_path / "bad.npy", units, durations[:2])
    (tmp_path / "bad.txt").write_text("u1 x2")
    with pytest.raises(ValueError, match="'x2'"):
        datasets.load_frame_units(tmp_path / "bad.txt")
    assert not (tmp_path / "bad.npy").exists()


def test_settings_record_refuses_other_settings(tmp_path):
    check_settings(tmp_path, "encode", {"k": 100, "lmbda": 600.0})
    check_settings(tmp_path, "encode", {"k": 100, "lmbda": 600.0})  # same settings: fine
    with pytest.raises(SettingsMismatch, match="lmbda: 600.0 there, 0.0 now"):
        check_settings(tmp_path, "encode", {"k": 100, "lmbda": 0.0})
    assert json.loads((tmp_path / "dpslm_settings.json").read_text())["lmbda"] == 600.0


# -- distributed setup ----------------------------------------------------------------------------


def test_device_selection_under_torchrun_by_simulation():
    alone = distributed.resolve(None, {}, cuda_available=False)
    assert (alone.device, alone.backend, alone.enabled) == (torch.device("cpu"), None, False)
    assert distributed.resolve("cuda:1", {}, cuda_available=True).device == torch.device("cuda:1")
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}
    for requested in (None, "cuda", "cuda:0", "cuda:1"):
        rank = distributed.resolve(requested, env, cuda_available=True)
        assert (rank.device, rank.backend, rank.rank, rank.world_size) == (torch.device("cuda:1"), "nccl", 3, 4)
    cpu = distributed.resolve("cpu", env, cuda_available=True)
    assert (cpu.device, cpu.backend) == (torch.device("cpu"), "gloo")
    assert distributed.resolve(None, env, cuda_available=False).backend == "gloo"
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        distributed.resolve("cuda:2", env, cuda_available=True)
    with pytest.raises(ValueError, match="not available"):
        distributed.resolve("cuda", {}, cuda_available=False)
    with pytest.raises(ValueError, match="inconsistent"):
        distributed.resolve(None, {"WORLD_SIZE": "2", "RANK": "2"}, cuda_available=False)


# -- synthetic corpora ----------------------------------------------------------------------------


def markov_units(root, k=16, files=48, length=150, seed=0) -> float:
    """Unit files from a Markov chain where every unit has two equally likely successors: ln 2 nats/unit."""
    rng = np.random.default_rng(seed)
    successors = np.array([rng.choice([j for j in range(k) if j != i], 2, replace=False) for i in range(k)])
    for f in range(files):
        units = [int(rng.integers(k))]
        for _ in range(length - 1):
            units.append(int(successors[units[-1], rng.integers(2)]))
        datasets.save_units(root / f"chapter{f % 4}" / f"utt{f:03d}.npy", torch.tensor(units),
                            torch.from_numpy(rng.integers(1, 6, length)))  # fmt: skip
    return math.log(2)


def mapped_codes(units: list[int]) -> list[int]:
    """The synthetic ELLA-V task: each unit lasts 5 frames (0.1 s = 4 codec frames) and sounds as codes 10u..10u+3."""
    return [10 * u + i for u in units for i in range(4)]


def unit_code_pairs(units_root, codes_root, k=6, files=40, length=12, seed=1) -> None:
    rng = np.random.default_rng(seed)
    for f in range(files):
        units = [int(rng.integers(k))]
        while len(units) < length:
            u = int(rng.integers(k))
            if u != units[-1]:
                units.append(u)
        datasets.save_units(units_root / f"utt{f:03d}.npy", torch.tensor(units), torch.full((length,), 5))
        np.save(codes_root / f"utt{f:03d}.npy", np.array(mapped_codes(units)))


# -- learning -------------------------------------------------------------------------------------


def test_tiny_unit_lm_learns_a_markov_source_to_its_entropy(tmp_path):
    entropy = markov_units(tmp_path / "units")
    run = dpslm_utils.train_ulm(tmp_path / "units", tmp_path / "run", k=16, max_steps=80, eval_interval=40,
                                lr_final=1e-3, progress=False)  # fmt: skip
    val = [m["val_loss"] for m in run.metrics if "val_loss" in m]
    assert len(val) == 2 and val[-1] < entropy + 0.08, val  # uniform guessing would be ln 16 = 2.77
    assert run.config["data"]["train_files"] == 47 and run.config["data"]["val_files"] == 1
    ulm = dpslm_utils.UnitLM.from_checkpoint(run.best_checkpoint)
    official = load_fixture("ulm_tiny.pt")
    saved = torch.load(run.best_checkpoint, weights_only=True)
    assert list(saved) == list(official) and list(saved["model_args"]) == list(official["model_args"])
    assert saved["model_state_dict"].keys() == official["model_state_dict"].keys()
    units = datasets.load_frame_units(tmp_path / "units" / "chapter0" / "utt000.npy").unique_consecutive()
    assert -ulm.loglikelihood(units[:60]) / 59 < entropy + 0.3


def test_tiny_ellav_learns_a_unit_to_code_mapping(tmp_path):
    (tmp_path / "units").mkdir()
    (tmp_path / "codes").mkdir()
    unit_code_pairs(tmp_path / "units", tmp_path / "codes")
    np.save(tmp_path / "codes" / "utt000.npy", np.arange(30))  # 0.75 s of codes for 1.2 s of units: skipped
    run = dpslm_utils.train_ellav(tmp_path / "units", tmp_path / "codes", tmp_path / "run", k=6, max_steps=60,
                                  eval_interval=60, lr=1e-2, warmup_steps=10, decay_steps=50, lr_final=1e-3,
                                  dropout=0.0, progress=False)  # fmt: skip
    assert run.config["data"]["train_files"] + run.config["data"]["val_files"] == 39
    model = dpslm_utils.ELLAV.from_checkpoint(run.best_checkpoint)
    saved = torch.load(run.best_checkpoint, weights_only=True)
    assert list(saved) == ["model_args", "tokenizer", "model_state"] and saved["tokenizer"] == unit_tokenizer(6)
    prompts = [[3, 1, 4, 0, 5, 2, 4], [2, 5, 1, 3, 0]]  # new sequences
    generation = model.generate(prompts, temperature=0.0)
    assert all(generation.finished)
    assert [c.tolist() for c in generation.codes] == [mapped_codes(p) for p in prompts]


# -- bookkeeping: resume, refusal, DDP ------------------------------------------------------------


def _small_run(units, out, **overrides):
    settings = dict(TINY, batch_size=4, chunk_size=32, eval_interval=3, log_interval=1, warmup_steps=2,
                    decay_steps=6, progress=False)  # fmt: skip
    return dpslm_utils.train_ulm(units, out, k=16, **{**settings, **overrides})


def _assert_same_training(a, b, loss_rel: float, weights_atol: float) -> None:
    """Runs a and b saw the same tokens, logged the same losses and ended with the same weights (rtol 1e-5)."""
    for x, y in zip(a.metrics, b.metrics, strict=True):
        assert x["tokens"] == y["tokens"]
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=loss_rel)
    state_a = torch.load(a.last_checkpoint, weights_only=True)["model_state_dict"]
    state_b = torch.load(b.last_checkpoint, weights_only=True)["model_state_dict"]
    for name in state_a:
        torch.testing.assert_close(state_a[name], state_b[name], rtol=1e-5, atol=weights_atol)


def test_resuming_gives_the_uninterrupted_run(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dpslm_utils.training")
    markov_units(tmp_path / "units", files=12, length=40)
    whole = _small_run(tmp_path / "units", tmp_path / "whole", max_steps=6, dropout=0.1)
    _small_run(tmp_path / "units", tmp_path / "parts", max_steps=3, dropout=0.1)
    parts = _small_run(tmp_path / "units", tmp_path / "parts", max_steps=6, dropout=0.1)  # resumes
    assert "resuming" in caplog.text
    assert [m["step"] for m in parts.metrics] == list(range(1, 7))
    _assert_same_training(whole, parts, loss_rel=1e-6, weights_atol=1e-6)

    with pytest.raises(ValueError, match="lr: .* there"):
        _small_run(tmp_path / "units", tmp_path / "parts", max_steps=6, dropout=0.1, lr=1e-2)
    restarted = _small_run(tmp_path / "units", tmp_path / "parts", max_steps=3, dropout=0.1, lr=1e-2, overwrite=True)
    assert [m["step"] for m in restarted.metrics] == [1, 2, 3] and restarted.config["lr"] == 1e-2


def _become_rank(rank: int, port: int) -> None:
    """Make this spawned process rank ``rank`` of a two-process torchrun-style run on ``port`` (one thread)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)


def _ddp_rank(rank: int, port: int, units: str, out: str) -> None:
    _become_rank(rank, port)
    _small_run(units, out, max_steps=4, grad_accum=1, device="cpu")


def test_two_gloo_processes_equal_one_process_with_twice_the_accumulation(tmp_path):
    """Same micro-batches, gradients averaged by DDP instead of accumulated: losses and weights agree to 1e-5."""
    markov_units(tmp_path / "units", files=12, length=40)
    single = _small_run(tmp_path / "units", tmp_path / "single", max_steps=4, grad_accum=2)
    torch.multiprocessing.spawn(_ddp_rank, args=(free_port(), str(tmp_path / "units"), str(tmp_path / "ddp")), nprocs=2)
    _assert_same_training(single, dpslm_utils.TrainingRun(tmp_path / "ddp"), loss_rel=1e-5, weights_atol=1e-5)
    with pytest.raises(ValueError, match=r"saved by a run on 2 process\(es\), this one has 1: .*--nproc-per-node 2"):
        _small_run(tmp_path / "units", tmp_path / "ddp", max_steps=6, grad_accum=1, device="cpu")  # the same run, alone


def _short_utterances(root) -> None:
    """Every file its own chapter and every other file one unit long: some micro-batches of one item have no chunk
    of 2 ids or more (a chunk that starts at the last id of such a file is dropped)."""
    rng = np.random.default_rng(0)
    for f in range(8):
        units = np.concatenate([rng.permutation(16), rng.permutation(16)])[: 1 if f % 2 else 30]
        datasets.save_units(root / "units" / f"c{f}" / "u.npy", torch.from_numpy(units), torch.full((len(units),), 3))
    for f in range(2):
        datasets.save_units(root / "val" / f"v{f}.npy", torch.from_numpy(rng.permutation(16)[:12]), torch.full((12,), 3))


def _short_run(root, out, **overrides):
    return _small_run(root / "units", out, val_dir=root / "val", batch_size=1, max_steps=6, **overrides)


def _ddp_short_rank(rank: int, port: int, root: str, out: str) -> None:
    _become_rank(rank, port)
    _short_run(Path(root), out, grad_accum=1, device="cpu")


def test_a_micro_batch_without_a_chunk_still_trains_on_every_rank(tmp_path, monkeypatch):
    """A micro-batch whose chunks are all too short packs one uncounted input (was torch.cat([]), which killed the
    run, and under DDP the rank): two gloo processes still equal one process with twice the accumulation."""
    _short_utterances(tmp_path)
    pack, packed = PackedBatch.pack.__func__, []
    monkeypatch.setattr(PackedBatch, "pack", classmethod(lambda cls, s, m: packed.append(len(s)) or pack(cls, s, m)))
    single = _short_run(tmp_path, tmp_path / "single", grad_accum=2)
    assert 0 in packed  # a micro-batch without a chunk happened
    assert [m["step"] for m in single.metrics] == list(range(1, 7))
    assert all(math.isfinite(m["train_loss"]) for m in single.metrics)
    monkeypatch.undo()
    torch.multiprocessing.spawn(_ddp_short_rank, args=(free_port(), str(tmp_path), str(tmp_path / "ddp")), nprocs=2)
    _assert_same_training(single, dpslm_utils.TrainingRun(tmp_path / "ddp"), loss_rel=1e-5, weights_atol=1e-5)


def test_an_empty_micro_batch_gives_every_parameter_a_zero_gradient():
    """What DDP needs of every rank at a gradient synchronisation, and what the loss must not see."""
    batch = PackedBatch.pack([], [])
    assert batch.seqlens == [1] and batch.num_tokens == 1 and not batch.loss_mask.any()
    model = dpslm_utils.UnitLM.from_checkpoint(FIXTURES / "ulm_tiny.pt").transformer
    loss, count = training._PackedLoss(model, -100)(batch.src_ids, batch.tgt_ids, batch.loss_mask, batch.seqlens)
    loss.backward()
    assert loss.item() == 0.0 and int(count) == 0
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def _ddp_failing_rank(rank: int, port: int, units: str, out: str, failure: str) -> None:
    """One rank of a two-process run in which rank 0 alone fails; writes what this rank raised to OUT/../rank{rank}.txt."""
    _become_rank(rank, port)
    if failure == "save" and rank == 0:  # the disk is full at the first save, for rank 0 (the one that writes)
        import errno

        from dpslm_utils import checkpoints

        def full_disk(tmp):
            raise OSError(errno.ENOSPC, "No space left on device")

        training.save_atomically = lambda obj, path: checkpoints.write_atomically(path, full_disk)
    try:
        _small_run(units, out, max_steps=4, grad_accum=1, device="cpu")
        outcome = "finished"
    except Exception as e:
        outcome = f"{type(e).__name__}: {e}"
    Path(out).with_name(f"rank{rank}.txt").write_text(outcome)


@pytest.mark.parametrize("failure", ["lock", "save"])
def test_when_rank_0_fails_every_rank_stops_with_its_reason(tmp_path, failure):
    """Rank 0 fails alone, before the first barrier (the folder is locked by another run) or while saving: the other
    rank raises the same error at once (it used to wait at the next collective: a lost connection, or a hang)."""
    import fcntl

    markov_units(tmp_path / "units", files=12, length=40)
    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / "train.lock", "a+") as lock:
        if failure == "lock":
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run holds the folder
        context = torch.multiprocessing.spawn(_ddp_failing_rank, nprocs=2, join=False,
                                              args=(free_port(), str(tmp_path / "units"), str(tmp_path / "run"), failure))  # fmt: skip
        deadline = time.monotonic() + 120
        while not context.join(timeout=1) and time.monotonic() < deadline:
            pass
        hung = [p.pid for p in context.processes if p.is_alive()]
        for p in context.processes:
            p.kill()
    assert not hung, "a rank waited for rank 0 for 2 minutes"
    expected = {"lock": r"ValueError: another training run \(.*\) is writing to .*run: wait for it to end.*",
                "save": r"OSError: \[Errno 28\] could not write .*train_state.pt: No space left on device"}[failure]  # fmt: skip
    for rank in (0, 1):
        assert re.fullmatch(expected, (tmp_path / f"rank{rank}.txt").read_text()), rank


def test_plot_training_draws_train_and_validation_curves(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from dpslm_utils import plots

    (tmp_path / "a").mkdir()
    lines = [{"step": s, "tokens": 100 * s, "train_loss": 3.0 / s, "lr": 1e-3, "tokens_per_s": 1.0} for s in (1, 2, 3, 4)]
    lines[1]["val_loss"], lines[3]["val_loss"] = 2.5, 1.5
    (tmp_path / "a" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    ax = plots.plot_training({"tiny": tmp_path / "a", "again": dpslm_utils.TrainingRun(tmp_path / "a")}, x="tokens")
    assert len(ax.lines) == 4
    assert ax.lines[1].get_xdata().tolist() == [200, 400] and ax.lines[1].get_ydata().tolist() == [2.5, 1.5]
    with pytest.raises(ValueError, match="metrics.jsonl does not exist"):
        plots.plot_training(tmp_path / "missing")


def test_train_commands_train_resume_and_refuse(tmp_path, capsys):
    from dpslm_utils import cli

    markov_units(tmp_path / "units", files=6, length=30)
    small = ["--dim", "32", "--n-layers", "1", "--head-dim", "16", "--n-heads", "2", "--n-kv-heads", "2",
             "--hidden-dim", "64", "--batch-size", "2", "--eval-interval", "2", "--quiet"]  # fmt: skip
    out = str(tmp_path / "run")
    assert cli.main(["train-ulm", str(tmp_path / "units"), out, "--k", "16", "--max-steps", "2", *small]) == 0
    assert cli.main(["train-ulm", str(tmp_path / "units"), out, "--k", "16", "--max-steps", "4", *small]) == 0
    assert "resuming" in capsys.readouterr().out
    assert [m["step"] for m in dpslm_utils.TrainingRun(tmp_path / "run").metrics] == [2, 4]
    def refused(argv, message):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert re.fullmatch(f"dpslm: error: .*{message}.*\n", err), err

    refused(["train-ulm", str(tmp_path / "units"), out, "--k", "16", "--chunk-size", "64", *small], "chunk_size: 128 there, 64 now")
    refused(["train-ulm", str(tmp_path / "units"), str(tmp_path / "other"), "--k", "8", *small], "beyond k - 1 = 7")
    assert not (tmp_path / "other").exists()
    (tmp_path / "codes").mkdir()
    refused(["train-ellav", str(tmp_path / "units"), str(tmp_path / "codes"), str(tmp_path / "e"), "--k", "16", *small],
            "no unit file .* has a codec file")
    refused(["train-ellav", str(tmp_path / "units"), str(tmp_path / "units"), str(tmp_path / "e"), "--k", "16", *small],
            r"utt000.npy: expected one sequence of codec tokens, got shape \[30, 2\]")


# -- safety: the state file, one commit point, the folder lock, numbers that lie -----------------


def test_resume_never_runs_code_from_the_state_file(tmp_path):
    markov_units(tmp_path / "units", files=12, length=40)
    _small_run(tmp_path / "units", tmp_path / "run", max_steps=3)
    state_file = tmp_path / "run" / "train_state.pt"
    state = torch.load(state_file, weights_only=True)  # the state is tensors and plain values
    torch.save({**state, "step": RunsCode(tmp_path / "ran")}, state_file)
    torch.load(state_file, weights_only=False)  # the crafted file is potent when unpickled freely
    assert (tmp_path / "ran").exists()
    (tmp_path / "ran").unlink()
    with pytest.raises(ValueError, match=r"train_state.pt holds Python objects besides tensors .* refused"):
        _small_run(tmp_path / "units", tmp_path / "run", max_steps=6)
    assert not (tmp_path / "ran").exists()


class _Killed(BaseException):
    """A kill: nothing in the package catches it."""


def _same_weights(a, b) -> bool:
    state_a, state_b = (torch.load(p, weights_only=True)["model_state_dict"] for p in (a, b))
    return state_a.keys() == state_b.keys() and all(torch.equal(state_a[n], state_b[n]) for n in state_a)


def test_a_kill_at_any_save_resumes_from_one_step(tmp_path, monkeypatch):
    """Killed during each save of an evaluation in turn, the run resumes to the uninterrupted one, bit for bit."""
    import shutil

    markov_units(tmp_path / "units", files=12, length=40)
    whole = _small_run(tmp_path / "units", tmp_path / "whole", max_steps=6, dropout=0.1)
    _small_run(tmp_path / "units", tmp_path / "at3", max_steps=3, dropout=0.1)
    real_save, killed_at = torch.save, []
    for kill_at in range(1, 10):
        out = tmp_path / f"kill{kill_at}"
        shutil.copytree(tmp_path / "at3", out)
        saves = []

        def save(obj, f, *args, **kwargs):
            saves.append(1)
            if len(saves) == kill_at:
                raise _Killed()
            return real_save(obj, f, *args, **kwargs)

        monkeypatch.setattr(torch, "save", save)
        try:
            _small_run(tmp_path / "units", out, max_steps=6, dropout=0.1)
        except _Killed:
            killed_at.append(kill_at)
        monkeypatch.setattr(torch, "save", real_save)
        if killed_at[-1:] != [kill_at]:
            break
        resumed = _small_run(tmp_path / "units", out, max_steps=6, dropout=0.1)
        assert [m["step"] for m in resumed.metrics] == list(range(1, 7)), kill_at
        assert [m["train_loss"] for m in resumed.metrics] == [m["train_loss"] for m in whole.metrics], kill_at
        assert _same_weights(resumed.last_checkpoint, whole.last_checkpoint), kill_at
        assert _same_weights(resumed.best_checkpoint, whole.best_checkpoint), kill_at
        assert not list(out.glob(".*.part")), kill_at  # a killed save's temporary file is cleared on resume
    assert len(killed_at) >= 3  # the state, last.pt and best.pt (and the resume's own exports)


def test_resume_refuses_data_that_changed(tmp_path):
    markov_units(tmp_path / "units", files=12, length=40)
    run = _small_run(tmp_path / "units", tmp_path / "run", max_steps=3)
    markov_units(tmp_path / "units", files=12, length=40, seed=1)  # the same files, other units
    with pytest.raises(ValueError, match=r"the training data changed since .*train_state.pt was saved .*--overwrite"):
        _small_run(tmp_path / "units", tmp_path / "run", max_steps=6)
    assert [m["step"] for m in run.metrics] == [1, 2, 3] and run.config["steps_done"] == 3


def test_a_second_run_into_the_folder_is_refused_while_the_first_trains(tmp_path, monkeypatch):
    markov_units(tmp_path / "units", files=12, length=40)
    out = tmp_path / "run"
    out.mkdir()
    (out / "train.lock").write_text("process 999999 on a machine that crashed\n")  # a stale lock file holds nothing
    validate, twins = training.validation_loss, []

    def validate_and_start_a_twin(*args):
        if not twins:
            twins.append("started")
            with pytest.raises(ValueError, match=r"another training run \(process \d+ on .+\) is writing to .*run"):
                _small_run(tmp_path / "units", out, max_steps=6)
        return validate(*args)

    monkeypatch.setattr(training, "validation_loss", validate_and_start_a_twin)
    run = _small_run(tmp_path / "units", out, max_steps=6)
    assert twins and [m["step"] for m in run.metrics] == list(range(1, 7))  # the twin wrote nothing in between


def test_a_torn_last_metrics_line_does_not_block_resume(tmp_path):
    markov_units(tmp_path / "units", files=12, length=40)
    run = _small_run(tmp_path / "units", tmp_path / "run", max_steps=3)
    with (tmp_path / "run" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "tokens": 1')  # what a kill in the middle of a write leaves
    assert [m["step"] for m in run.metrics] == [1, 2, 3]
    resumed = _small_run(tmp_path / "units", tmp_path / "run", max_steps=6)
    assert [m["step"] for m in resumed.metrics] == list(range(1, 7))
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not a metrics record"):
        resumed.metrics


def test_an_empty_or_truncated_state_or_config_file_is_named(tmp_path):
    markov_units(tmp_path / "units", files=12, length=40)
    _small_run(tmp_path / "units", tmp_path / "run", max_steps=3)
    state_file = tmp_path / "run" / "train_state.pt"
    whole = state_file.read_bytes()
    for content, problem in ((b"", "is empty"), (whole[: len(whole) // 2], "is not a readable PyTorch checkpoint")):
        state_file.write_bytes(content)
        with pytest.raises(ValueError, match=f"{re.escape(str(state_file))} {problem}.*--overwrite"):
            _small_run(tmp_path / "units", tmp_path / "run", max_steps=6)
    (tmp_path / "run" / "config.json").write_text('{"task": "ulm", ')
    with pytest.raises(ValueError, match=r"config.json is unreadable \(.*\): .*--overwrite"):
        _small_run(tmp_path / "units", tmp_path / "run", max_steps=6)
    restarted = _small_run(tmp_path / "units", tmp_path / "run", max_steps=3, overwrite=True)
    assert [m["step"] for m in restarted.metrics] == [1, 2, 3]


def test_a_state_saved_on_another_number_of_processes_is_refused(tmp_path):
    markov_units(tmp_path / "units", files=12, length=40)
    _small_run(tmp_path / "units", tmp_path / "run", max_steps=3)
    state_file = tmp_path / "run" / "train_state.pt"
    state = torch.load(state_file, weights_only=True)
    assert state["world_size"] == 1 and len(state["rng"]) == 1
    torch.save({**state, "world_size": 2, "rng": state["rng"] * 2}, state_file)  # as two processes save it
    with pytest.raises(ValueError, match=r"train_state.pt was saved by a run on 2 process\(es\), this one has 1"):
        _small_run(tmp_path / "units", tmp_path / "run", max_steps=6)


def test_a_validation_set_without_targets_is_refused(tmp_path):
    markov_units(tmp_path / "units", files=12, length=40)
    for i in range(3):  # one unit each: BOS then a unit the loss skips, nothing to score
        datasets.save_units(tmp_path / "val" / f"v{i}.npy", [i], [7])
    with pytest.raises(ValueError, match="no validation utterance has 2 or more units"):
        _small_run(tmp_path / "units", tmp_path / "run", max_steps=3, val_dir=tmp_path / "val")
    assert not (tmp_path / "run").exists()


def _nan_at_forward(monkeypatch, call: int) -> None:
    """The loss of the ``call``-th forward pass (training or validation) becomes NaN."""
    forward, calls = training._PackedLoss.forward, []

    def poisoned(self, *args):
        loss, count = forward(self, *args)
        calls.append(1)
        return (loss * math.nan if len(calls) == call else loss), count

    monkeypatch.setattr(training._PackedLoss, "forward", poisoned)


def test_a_loss_that_is_not_finite_stops_the_run(tmp_path, monkeypatch, capsys):
    from dpslm_utils import cli

    markov_units(tmp_path / "units", files=12, length=40)
    _nan_at_forward(monkeypatch, 5)  # steps 1-3, the validation at step 3 (one batch), then step 4
    with pytest.raises(RuntimeError, match=r"training loss is nan at step 4, .*train_state.pt still holds step 3") as stop:
        _small_run(tmp_path / "units", tmp_path / "run", max_steps=6)
    assert isinstance(stop.value, training.TrainingDiverged)
    assert [m["step"] for m in training.TrainingRun(tmp_path / "run").metrics] == [1, 2, 3]
    assert torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)["step"] == 3

    _nan_at_forward(monkeypatch, 1)
    small = ["--dim", "32", "--n-layers", "1", "--head-dim", "16", "--n-heads", "2", "--n-kv-heads", "2",
             "--hidden-dim", "64", "--batch-size", "2", "--quiet"]  # fmt: skip
    assert cli.main(["train-ulm", str(tmp_path / "units"), str(tmp_path / "cli"), "--k", "16", *small]) == 1
    captured = capsys.readouterr()
    assert re.fullmatch(r"dpslm: error: the training loss is nan at step 1, so training stopped \(nothing was saved\)\..*\n",
                        captured.err), captured.err  # fmt: skip
    assert "best.pt" not in captured.out + captured.err and not (tmp_path / "cli" / "best.pt").exists()


@pytest.mark.parametrize(
    "name, value, error, message",
    [("warmup_steps", -5, ValueError, "warmup_steps must be an integer >= 0, got -5"),
     ("lr_final", math.nan, ValueError, "lr_final must be finite, got nan"),
     ("lr", math.inf, ValueError, "lr must be finite"), ("lr", -1e-3, ValueError, "lr must be >= 0, got -0.001"),
     ("beta2", 1.0, ValueError, r"beta2 must be in \[0, 1\), got 1.0"), ("eps", 0.0, ValueError, "eps must be > 0"),
     ("grad_clip", -1.0, ValueError, "grad_clip must be >= 0"), ("decay_steps", 2.5, TypeError, "decay_steps must be an integer"),
     ("seed", -1, ValueError, "seed must be an integer from 0 to"), ("rope_theta", math.nan, ValueError, "rope_theta must be finite"),
     ("lr", "1e-3", TypeError, "lr must be a number"), ("chunk_size", 1, ValueError, "chunk_size must be at least 2")],
)  # fmt: skip
def test_every_training_setting_is_checked(name, value, error, message):
    with pytest.raises(error, match=message):
        training.resolve_config("ulm", "tiny", 16, {name: value})


def test_the_setting_checks_cover_every_preset_setting():
    for task, presets in training.PRESETS.items():
        for preset, settings in presets.items():
            assert set(settings) == set(training.SETTING_RANGES), (task, preset)
            config = training.resolve_config(task, preset, 500, {})
            assert {n: config[n] for n in settings} == settings  # every preset passes its own checks unchanged
    with pytest.raises(ValueError, match="k .* must be an integer from 1 to 1048576"):
        training.resolve_config("ulm", "tiny", 2**32, {})


def test_a_full_disk_while_saving_names_the_file_and_keeps_the_last_state(tmp_path, monkeypatch):
    import errno

    markov_units(tmp_path / "units", files=12, length=40)
    _small_run(tmp_path / "units", tmp_path / "run", max_steps=3)
    state_file = tmp_path / "run" / "train_state.pt"
    saved = state_file.read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if "optimizer" in obj:  # the training state: half of it reaches the disk, then the disk is full
            if hasattr(f, "write"):
                f.write(b"half a state")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=f"could not write {re.escape(str(state_file))}: No space left on device"):
        _small_run(tmp_path / "units", tmp_path / "run", max_steps=6)
    monkeypatch.setattr(torch, "save", real_save)
    assert state_file.read_bytes() == saved and not list((tmp_path / "run").glob(".*.part"))
    resumed = _small_run(tmp_path / "units", tmp_path / "run", max_steps=6)
    assert [m["step"] for m in resumed.metrics] == list(range(1, 7))
