"""Code structure: random-tiny scaffolding in one module, one from_pretrained sequence, one repr format."""

import ast
import functools
import importlib
import inspect
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import soundfile
import torch

import dpslm_utils
from dpslm_utils import checkpoints, random_tiny, registry

STAGE_MODULES = ("transformer", "wavlm", "codebooks", "quantize", "ulm", "ellav", "wavtokenizer")


@pytest.mark.parametrize("name", STAGE_MODULES)
def test_stage_modules_hold_no_random_tiny_scaffolding(name):
    module = importlib.import_module(f"dpslm_utils.{name}")
    source = inspect.getsource(module)
    leftovers = [attr for attr in vars(module) if attr.upper().startswith("RANDOM_TINY") or "write_random" in attr]
    assert not leftovers, f"{name}.py still defines random-tiny scaffolding: {leftovers}"
    assert "random_tiny" not in _import_graph()[name]
    assert "fork_rng" not in source, f"{name}.py builds seeded random weights; that belongs in random_tiny.py"


def test_codebooks_module_does_not_reach_back_into_wavlm_or_the_recordings():
    imported = set(_import_graph()["codebooks"])
    assert not {"wavlm", "audio", "pipeline"} & imported, imported


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
    imported = set(_import_graph()["datasets"])
    assert not {"ulm", "ellav", "phones", "batches", "transformer", "training"} & imported, imported


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


# -- the module graph: layers, no upward import, no cycle -------------------------------------------

PACKAGE = Path(dpslm_utils.__file__).parent
README = PACKAGE.parent / "README.md"

LAYERS = (
    ("paper", "checks", "fast", "batches", "distributed", "viterbi_numba", "toy_language"),  # import nothing of ours
    ("registry",),
    ("checkpoints",),
    ("audio", "datasets", "settings_record", "corpora"),
    ("wavlm",), ("codebooks",), ("quantize",), ("transformer",), ("ulm", "ellav"), ("wavtokenizer",), ("pipeline",),
    ("features", "rates"),
    ("phones", "training", "evaluation", "wer", "tree_encoding"),
    ("plots", "exercises", "random_tiny", "toy_experiment"),
    ("widgets", "demo"),
    ("cli",),
    ("__main__", "__init__"),
)
"""The package's modules, bottom to top, as README.md's layout section lists them: a module may import
only modules of the layers below its own. The middle is the pipeline in data-flow order."""

LAYER = {module: level for level, modules in enumerate(LAYERS) for module in modules}



def _imported(node: ast.AST, modules: set[str]) -> list[str]:
    """The modules of the package that one import statement, or ``importlib.import_module("...")`` call, loads
    (``"__init__"`` for a name taken from the package itself)."""
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level == 0:
            if base.partition(".")[0] != "dpslm_utils":
                return []
            base = base.removeprefix("dpslm_utils").removeprefix(".")
        if base:
            return [base.partition(".")[0]]
        return [alias.name if alias.name in modules else "__init__" for alias in node.names]
    if isinstance(node, ast.Import):
        names = [alias.name.split(".") for alias in node.names if alias.name.partition(".")[0] == "dpslm_utils"]
        return [parts[1] if len(parts) > 1 else "__init__" for parts in names]
    if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module":
        if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            parts = node.args[0].value.removeprefix("dpslm_utils").lstrip(".").split(".")
            return [parts[0]] if parts[0] in modules else []
    return []


@functools.cache
def _import_graph() -> dict[str, dict[str, int]]:
    """Module -> {module of the package it imports: line of the first such import}, deferred imports (inside
    functions) included: every ``dpslm_utils/*.py``, read with ``ast``."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    graph = {}
    for name in sorted(modules):
        imports: dict[str, int] = {}
        for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text())):
            for target in _imported(node, modules):
                if target != name:
                    imports.setdefault(target, node.lineno)
        graph[name] = imports
    return graph


def test_the_graph_reader_sees_every_form_of_import():
    code = ("from . import checkpoints, __version__\nfrom .audio import load_audio\nimport dpslm_utils.wavlm\n"
            "from dpslm_utils.ulm import UnitLM\nimport torch\ndef f():\n    from . import random_tiny\n"
            "    importlib.import_module('.ellav', __package__)\n")
    found = [m for node in ast.walk(ast.parse(code)) for m in _imported(node, set(LAYER))]
    assert sorted(found) == ["__init__", "audio", "checkpoints", "ellav", "random_tiny", "ulm", "wavlm"]


def test_every_module_has_one_place_in_the_layers():
    listed = [module for modules in LAYERS for module in modules]
    assert len(listed) == len(set(listed)), "a module is listed twice"
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    assert set(listed) == modules, (f"not in LAYERS (place it, here and in README.md's layout): {sorted(modules - set(listed))}; "
                                    f"no such module: {sorted(set(listed) - modules)}")


def test_no_module_imports_from_its_own_layer_or_above():
    upward = {(importer, imported): line for importer, imports in _import_graph().items()
              for imported, line in imports.items() if LAYER[imported] >= LAYER[importer]}
    unexpected = [f"dpslm_utils/{a}.py:{line} imports {b} (layer {LAYER[b]}, its own is {LAYER[a]})"
                  for (a, b), line in sorted(upward.items())]
    assert not unexpected, unexpected


def _a_cycle(graph: dict[str, dict[str, int]]) -> list[str]:
    """One import cycle of ``graph`` (``[a, b, ..., a]``), or [] if there is none (depth-first search)."""
    done: set[str] = set()

    def visit(path: list[str]) -> list[str]:
        for target in sorted(graph[path[-1]]):
            if target in path:
                return path[path.index(target):] + [target]
            if target not in done and (cycle := visit([*path, target])):
                return cycle
        done.add(path[-1])
        return []

    for module in sorted(graph):
        if module not in done and (cycle := visit([module])):
            return cycle
    return []


def test_the_import_graph_has_no_cycle():
    assert _a_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == ["a", "b", "c", "a"]
    assert _a_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 1, "b": 1}}) == []
    cycle = _a_cycle(_import_graph())
    assert not cycle, " -> ".join(cycle)


def test_the_readme_layout_lists_the_modules_layer_by_layer():
    """README.md's layout section names every module, first mentioned in the order of LAYERS."""
    layout = README.read_text().split("## Layout", 1)[1]
    block = layout.split("```", 2)[1].split("\nnotebooks/", 1)[0]  # the lines of dpslm_utils/
    mentioned = list(dict.fromkeys(w for w in re.findall(r"\b\w+\b", block) if w in LAYER))
    assert set(mentioned) == set(LAYER) - {"__init__"}, set(LAYER) - set(mentioned)
    out_of_order = [(a, b) for a, b in zip(mentioned, mentioned[1:]) if LAYER[a] > LAYER[b]]
    assert not out_of_order, f"README.md's layout names these in another order than LAYERS: {out_of_order}"


# -- random-tiny writers: registered with the loader, which imports none itself ----------------------

def test_the_loader_finds_the_random_tiny_writers_through_their_entry_point(tmp_path):
    """A program that starts from a stage module gets random models, though nothing imported random_tiny."""
    code = ("import sys; from dpslm_utils import checkpoints; print(checkpoints.RANDOM_WRITERS, 'dpslm_utils.random_tiny' in sys.modules); "
            "from dpslm_utils.ulm import UnitLM; model = UnitLM.from_pretrained(100, 600); "
            "print(model.random_weights, model.k, 'dpslm_utils.random_tiny' in sys.modules)")
    env = dict(os.environ, DPSLM_WEIGHTS="random-tiny", DPSLM_CACHE=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.stdout.splitlines() == ["{} False", "True 100 True"], result.stderr
    declared = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]["entry-points"]
    assert declared[checkpoints.RANDOM_WRITERS_GROUP] == {"random_tiny": "dpslm_utils.random_tiny"}


def test_load_pretrained_uses_the_writer_registered_for_a_family(random_tiny, monkeypatch):
    assert all(checkpoints.RANDOM_WRITERS[family] is writer for family, writer in dpslm_utils.random_tiny.WRITERS.items())
    written = []

    def write_toy(path, size):
        written.append(size)
        path.write_text(str(size))

    monkeypatch.setitem(checkpoints.RANDOM_WRITERS, "toy", write_toy)
    remote = registry.RemoteFile("https://unreachable.invalid/toy-abcdef12.txt", "abcdef12")
    model = checkpoints.load_pretrained(lambda path: SimpleNamespace(text=path.read_text()), remote, "toy", size=7)
    assert (model.text, written, model.random_weights) == ("7", [7], True)


# -- twins: one piece of code, one name, per meaning ----------------------------------------------

def _module_trees():
    return {path.stem: ast.parse(path.read_text()) for path in sorted(PACKAGE.glob("*.py"))}


def test_one_function_reads_an_audio_file_as_mono(tmp_path):
    """audio.load_mono is the one reader: no function elsewhere calls load_audio and to_mono itself."""
    twins = []
    for name, tree in _module_trees().items():
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            calls = {getattr(c.func, "id", getattr(c.func, "attr", None)) for c in ast.walk(function) if isinstance(c, ast.Call)}
            if name != "audio" and {"load_audio", "to_mono"} <= calls:
                twins.append(f"{name}.{function.name}")
    assert not twins, f"read with audio.load_mono instead: {twins}"
    from dpslm_utils.audio import load_mono

    stereo = torch.stack([torch.linspace(-0.5, 0.5, 800), torch.full((800,), 0.25)])  # [channels, samples]
    soundfile.write(tmp_path / "stereo.wav", stereo.T.numpy(), 8000, subtype="FLOAT")
    wav, sample_rate = load_mono(tmp_path / "stereo.wav")
    assert sample_rate == 8000 and wav.shape == (1, 800) and torch.allclose(wav[0], stereo.mean(0))


PER_MODULE_CONSTANTS = {"SAMPLE_RATE", "CHECKPOINT_KEYS", "SILENCE"}
"""Names that several modules define on purpose, each for its own model, family or phone set (wavlm's
16 kHz and wavtokenizer's 24 kHz; ulm's and ellav's checkpoint layouts; ARPAbet's and espeak-ng's silence)."""


def test_no_two_modules_define_one_constant_name():
    defined: dict[str, list[str]] = {}
    for name, tree in _module_trees().items():
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                if isinstance(target, ast.Name) and target.id.lstrip("_").isupper():
                    defined.setdefault(target.id, []).append(name)
    twins = {constant: modules for constant, modules in defined.items()
             if len(modules) > 1 and constant not in PER_MODULE_CONSTANTS}
    assert not twins, f"one name, several definitions (give each meaning its own name): {twins}"


def test_ellav_generate_and_generate_tokens_take_the_same_parameters_in_the_same_order(random_tiny):
    def parameters(function):
        return [(name, p.default) for name, p in inspect.signature(function).parameters.items()]

    assert parameters(dpslm_utils.ELLAV.generate) == parameters(dpslm_utils.ELLAV.generate_tokens)
    from dpslm_utils.ellav import MAX_CODEC_TOKENS_PER_PHONE as CAP

    ellav = dpslm_utils.ELLAV.from_pretrained(100, 600)
    prompt = list(range(1, 40, 3))
    positional = ellav.generate(prompt, 300, CAP, 1.0, 0.8, 5)  # README's order: ..., temperature, top_p, seed
    keywords = ellav.generate(prompt, max_tokens=300, seed=5)
    tokens, _ = ellav.generate_tokens(prompt, 300, CAP, 1.0, 0.8, 5)
    codec = ellav.codec_of_token.cpu()[tokens[0]]  # -1 for EOP and unit tokens
    assert positional.codes[0].tolist() == keywords.codes[0].tolist() == codec[codec >= 0].tolist()
    assert len(keywords.codes[0]) > 10
