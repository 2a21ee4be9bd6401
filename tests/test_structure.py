"""Code structure: random-tiny scaffolding in one module, one from_pretrained sequence, one repr format."""

import ast
import importlib
import inspect
import re

import pytest
import torch

import dpslm_utils
from dpslm_utils import checkpoints, random_tiny, registry

STAGE_MODULES = ("transformer", "wavlm", "codebooks", "quantize", "ulm", "ellav", "wavtokenizer")


def _imported_modules(module) -> set[str]:
    tree = ast.parse(inspect.getsource(module))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.add(("." * node.level) + (node.module or ""))
            names.update("." * node.level + alias.name for alias in node.names if not node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("name", STAGE_MODULES)
def test_stage_modules_hold_no_random_tiny_scaffolding(name):
    module = importlib.import_module(f"dpslm_utils.{name}")
    source = inspect.getsource(module)
    leftovers = [attr for attr in vars(module) if attr.upper().startswith("RANDOM_TINY") or "write_random" in attr]
    assert not leftovers, f"{name}.py still defines random-tiny scaffolding: {leftovers}"
    assert "random_tiny" not in _imported_modules(module) and ".random_tiny" not in _imported_modules(module)
    assert "fork_rng" not in source, f"{name}.py builds seeded random weights; that belongs in random_tiny.py"


def test_codebooks_module_does_not_reach_back_into_wavlm_or_the_recordings():
    imported = _imported_modules(importlib.import_module("dpslm_utils.codebooks"))
    assert not {".wavlm", ".audio", ".pipeline"} & imported, imported


def test_one_writer_per_checkpoint_family_and_a_clear_error_for_others(tmp_path):
    assert set(random_tiny.WRITERS) == {"wavlm", "codebook", "unit_lm", "ellav", "wavtokenizer",
                                        "phone_lm", "phone_lm_tokenizer", "phone_ellav"}
    with pytest.raises(ValueError, match="no random-tiny writer for checkpoint family 'hubert'.*'codebook'"):
        random_tiny.write("hubert", tmp_path / "x.pt")
    assert not list(tmp_path.iterdir())


LOADERS = {
    "wavlm": lambda: dpslm_utils.WavLMEncoder.from_pretrained(),
    "codebook": lambda: dpslm_utils.DPDPQuantizer.from_pretrained(100, 600),
    "unit_lm": lambda: dpslm_utils.UnitLM.from_pretrained(100, 600),
    "ellav": lambda: dpslm_utils.ELLAV.from_pretrained(100, 600),
    "wavtokenizer": lambda: dpslm_utils.WavTokenizer.from_pretrained("small_320_24k_4096"),
    "phone_ellav": lambda: dpslm_utils.ELLAV.from_pretrained_phones(),
}
EXPECTED_FILES = {
    "wavlm": registry.WAVLM_LARGE,
    "codebook": registry.codebook_file(100),
    "unit_lm": registry.unit_lm_file(100, 600),
    "ellav": registry.ellav_file(100, 600),
    "wavtokenizer": registry.wavtokenizer_file("small_320_24k_4096"),
    "phone_ellav": registry.ELLAV_PHONEMES,
}


@pytest.mark.parametrize("family", sorted(LOADERS))
def test_every_from_pretrained_goes_through_the_one_helper(family, monkeypatch):
    calls = []

    class Marker:
        random_weights = None

    def record(load, remote, family, **arguments):
        calls.append((remote, family, arguments))
        return Marker()

    monkeypatch.setattr(checkpoints, "load_pretrained", record)
    assert isinstance(LOADERS[family](), Marker)
    assert calls == [(EXPECTED_FILES[family], family, calls[0][2])]


def test_load_pretrained_marks_random_weights_and_forwards_the_writer_arguments(random_tiny):
    model = checkpoints.load_pretrained(
        lambda path: dpslm_utils.UnitLM.from_checkpoint(path), registry.unit_lm_file(200, 700), "unit_lm", k=200
    )
    assert model.random_weights is True and model.k == 200


REPR_FORMAT = re.compile(r"^(\w+)\((\w+=[^=,()]+(?:\([^)]*\))?, )*\w+=[^=,()]+(, RANDOM WEIGHTS \(DPSLM_WEIGHTS=random-tiny\): outputs carry no meaning)?\)$")


def test_every_model_repr_has_one_format(random_tiny):
    model = dpslm_utils.DPSLM.from_pretrained(100, 600, device="cpu")
    quantizer = dpslm_utils.DPDPQuantizer.from_pretrained(100, 600)
    texts = [repr(m) for m in (model, model.units.encoder, quantizer, model.ulm, model.ellav, model.vocoder)]
    for text in texts:
        assert REPR_FORMAT.match(text), text
        assert text.endswith(f", {checkpoints.RANDOM_WEIGHTS_MESSAGE})"), text
    modules = texts[1:]  # the nn.Modules with weights report their size the same way
    assert all(re.search(r", parameters=\d+\.\d\dM, ", text) for text in modules if "DPDPQuantizer" not in text)
    plain = dpslm_utils.DPDPQuantizer(torch.randn(5, 3), 10.0)
    assert repr(plain) == "DPDPQuantizer(k=5, dim=3, lmbda=10, num_neighbors=None)"


def test_ellav_generate_returns_one_shape_of_result(random_tiny):
    from dpslm_utils.ellav import Generation

    ellav = dpslm_utils.ELLAV.from_pretrained(100, 600)
    assert "return_alignment" not in inspect.signature(ellav.generate).parameters
    result = ellav.generate([[3, 4, 5], [7]], max_tokens=60, seed=0)
    assert isinstance(result, Generation) and len(result) == 3
    codes, finished, alignments = result
    assert [len(c) for c in codes] == [int(a.codec_counts.sum()) for a in alignments]
    assert [a.units.tolist() for a in alignments] == [[3, 4, 5], [7]] and finished == [True, True]


def test_the_per_unit_code_cap_has_one_name_and_one_default():
    from dpslm_utils.ellav import MAX_CODEC_TOKENS_PER_PHONE

    def cap_parameters(function):
        return {n: p.default for n, p in inspect.signature(function).parameters.items() if n.startswith("max_codec")}

    expected = {"max_codec_tokens_per_phone": MAX_CODEC_TOKENS_PER_PHONE}
    for function in (dpslm_utils.ELLAV.generate, dpslm_utils.ELLAV.generate_tokens, dpslm_utils.DPSLM.synthesize):
        assert cap_parameters(function) == expected, function.__qualname__
    sources = "".join(inspect.getsource(importlib.import_module(f"dpslm_utils.{m}")) for m in ("ellav", "pipeline", "cli"))
    assert "max_codec_tokens_per_unit" not in sources.lower()


HISTORY_IN_DOCS = re.compile(r"untested|not (?:yet )?(?:been )?(?:run|tested|measured)|was measured|is no faster|speed-?up",
                             re.IGNORECASE)


def test_docstrings_state_what_and_why_not_history_or_benchmark_notes():
    """Measurements and "not run here" notes belong in benchmarks/README.md, not in public docstrings."""
    found = []
    for name in (*STAGE_MODULES, "checkpoints", "registry", "audio", "pipeline", "random_tiny", "plots", "cli"):
        module = importlib.import_module(f"dpslm_utils.{name}")
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(node):
                found += [f"{name}.{getattr(node, 'name', '')}: {m[0]!r}" for m in HISTORY_IN_DOCS.finditer(ast.get_docstring(node))]
    assert not found, found


def test_datasets_reads_files_and_knows_no_model_family():
    imported = _imported_modules(importlib.import_module("dpslm_utils.datasets"))
    assert not {".ulm", ".ellav", ".phones", ".batches", ".transformer", ".training"} & imported, imported


def test_each_model_family_gives_the_training_loop_every_member_of_its_task():
    from dpslm_utils import ellav, training, ulm

    config = training.resolve_config("ulm", "tiny", 8, {})
    corpus = ulm.UnitCorpus.from_utterances([ulm.tokenize_units([1, 1, 2, 3])], ["."], 4)
    pairs = [(torch.tensor([1, 1, 2, 3, 3]), torch.tensor([7, 8, 9, 10]))]
    members = [name for name in vars(training.Task) if not name.startswith("_")] + list(training.Task.__annotations__)
    for family, task in ((ulm, ulm.UnitLMTask(config, corpus, corpus)), (ellav, ellav.ELLAVTask(config, pairs, pairs))):
        assert not [name for name in members if not hasattr(task, name)], family.__name__
        batch = task.batch(0, torch.tensor([0]))
        assert len(batch.src_ids) == sum(batch.seqlens) and batch.loss_mask.any() and int(batch.tgt_ids.max()) < task.vocab_size
        args = training.ModelArgs(**training._model_sizes(config), vocab_size=task.vocab_size)
        model = training.Transformer(args, output_bias=task.output_bias)
        assert tuple(task.checkpoint(model)) == family.CHECKPOINT_KEYS  # the family's own checkpoint layout
