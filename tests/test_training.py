"""Training: the originals' data, objective and schedule (fixtures), learning on synthetic data, resume, DDP."""

import json
import logging
import math
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dpslm_utils
from dpslm_utils import datasets, distributed, training
from dpslm_utils.ellav import unit_tokenizer
from dpslm_utils.settings_record import SettingsMismatch, check_settings

from conftest import FIXTURES, free_port, load_fixture

TINY = dict(dim=32, n_layers=2, head_dim=16, hidden_dim=64, n_heads=2, n_kv_heads=2, dropout=0.0)
"""Smaller than the tiny preset, for the tests that check bookkeeping rather than learning."""


# -- fixtures from the originals ------------------------------------------------------------------


def test_tokens_and_chunks_match_the_original():
    fixture = load_fixture("ulm_train_fixture.pt")
    tokenized = [datasets.tokenize_units(torch.tensor(u)) for u in fixture["utterances_framewise"]]
    for ours, theirs in zip(tokenized, fixture["tokenized"], strict=True):
        assert torch.equal(ours, theirs)
    corpus = datasets.UnitCorpus.from_utterances(tokenized, fixture["chapters"])
    for case in fixture["chunks"]:  # incl. chunks that stop at a chapter boundary and at the corpus end
        assert torch.equal(corpus.chunk(case["index"], case["start"], case["chunk_size"]), case["ids"])


def test_packed_batch_loss_matches_the_original():
    fixture = load_fixture("ulm_train_fixture.pt")["batch"]
    items = fixture["items"]
    batch = datasets.PackedBatch.pack(items, [datasets.chunk_loss_mask(len(i)) for i in items])
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
        example = datasets.ellav_example(case["frame_units"], case["codes"], tokenizer)
        assert torch.equal(example.ids, case["ids"]) and torch.equal(example.loss_mask, case["loss_mask"])
        numbers = datasets.ellav_example([int(u[1:]) for u in case["frame_units"]], case["codes"], tokenizer)
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
    examples = [datasets.ellav_example(c["frame_units"], c["codes"], model.tokenizer) for c in cases]
    batch = datasets.PackedBatch.pack([e.ids for e in examples], [e.loss_mask for e in examples])
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
    official = torch.load(FIXTURES / "ulm_tiny.pt", weights_only=True)
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


def _ddp_rank(rank: int, port: int, units: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    _small_run(units, out, max_steps=4, grad_accum=1, device="cpu")


def test_two_gloo_processes_equal_one_process_with_twice_the_accumulation(tmp_path):
    """Same micro-batches, gradients averaged by DDP instead of accumulated: losses and weights agree to 1e-5."""
    markov_units(tmp_path / "units", files=12, length=40)
    single = _small_run(tmp_path / "units", tmp_path / "single", max_steps=4, grad_accum=2)
    torch.multiprocessing.spawn(_ddp_rank, args=(free_port(), str(tmp_path / "units"), str(tmp_path / "ddp")), nprocs=2)
    _assert_same_training(single, dpslm_utils.TrainingRun(tmp_path / "ddp"), loss_rel=1e-5, weights_atol=1e-5)


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
