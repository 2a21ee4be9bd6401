"""fast=True: the reduced-precision CPU path stays close to the originals' outputs (fixtures) with
stated tolerances, is chosen per model and device, and passes through the pipeline loaders."""

import copy
import io

import pytest
import torch
from torch import nn

from conftest import FIXTURES, load_fixture
from dpslm_utils import ELLAV, UnitEncoder, UnitLM, WavLMEncoder
from dpslm_utils.ellav import official_checkpoint as ellav_checkpoint
from dpslm_utils.fast import (
    KV_CACHE_DTYPE,
    MANY_ROWS,
    REDUCE_RANGE,
    Int8Linear,
    choose_format,
    kv_cache_dtype,
    make_fast,
    quantize_linears,
)
from dpslm_utils.random_tiny import random_transformer
from dpslm_utils.transformer import ModelArgs, StackedLinear, prefill
from dpslm_utils.ulm import official_checkpoint as ulm_checkpoint

FORMATS = ["int8", "bfloat16"]
# Tolerances measured on the fixtures (tiny random models) with margin; see benchmarks/README.md.
LOGIT_ATOL = {"int8": 0.3, "bfloat16": 0.1}  # logits span about ±2 (unit LM) and ±32 (ELLA-V)
LOGLIKELIHOOD_RTOL = {"int8": 0.01, "bfloat16": 0.005}  # sums of 25-40 log-probabilities
FEATURE_RELATIVE_ERROR = {"int8": 0.05, "bfloat16": 0.03}  # ‖f_fast − f‖ / ‖f‖


def test_format_choice_follows_the_work_and_the_device():
    assert choose_format(False, "cpu", weight_bound=True) is None
    assert choose_format(True, "cpu", weight_bound=True) == "int8"  # decoding reads weights: int8 on x86
    expected = "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "int8"
    assert choose_format(True, "cpu", weight_bound=False) == expected
    assert choose_format(True, "cuda", weight_bound=True) == "bfloat16"
    assert choose_format("int8", "cpu", weight_bound=False) == "int8"
    with pytest.raises(ValueError, match="CPU only"):
        choose_format("int8", "cuda:0", weight_bound=True)
    with pytest.raises(ValueError, match="fast must be True, False or one of"):
        choose_format("fp8", "cpu", weight_bound=True)


def test_int8_linear_rounds_each_weight_to_its_row_scale():
    torch.manual_seed(0)
    linear = nn.Linear(256, 64)
    quantized = Int8Linear(linear)
    dequantized = quantized.weight.float() * quantized.scale[:, None]
    assert quantized.weight.dtype == torch.int8 and quantized.weight.abs().max() == 127
    assert ((dequantized - linear.weight).abs() <= quantized.scale[:, None] / 2 + 1e-7).all()
    x = torch.randn(5, 3, 256)
    with torch.no_grad():
        expected = linear(x)
    relative_error = (quantized(x) - expected).norm() / expected.norm()
    assert quantized(x).shape == (5, 3, 64) and relative_error < 0.02
    uncompiled = torch.ops.quantized.linear_dynamic(x, quantized.packed, REDUCE_RANGE)
    assert torch.equal(quantized(x), uncompiled)  # the layer runs its product compiled: the same numbers


@pytest.mark.skipif("onednn" not in torch.backends.quantized.supported_engines, reason="one int8 kernel only")
def test_int8_kernels_for_few_and_many_rows_compute_the_same_products():
    """Prefill and scoring (many rows) run another int8 kernel than decoding: same quantization, same sums."""
    torch.manual_seed(0)
    quantized = Int8Linear(nn.Linear(256, 64))
    assert quantized.packed_for_many_rows is not quantized.packed
    x = 3 * torch.randn(2, MANY_ROWS, 256)
    few_rows_kernel = torch.ops.quantized.linear_dynamic(x, quantized.packed, REDUCE_RANGE)
    torch.testing.assert_close(quantized(x), few_rows_kernel, atol=1e-5, rtol=0)
    row = x[:1, :1]  # one row alone takes the few-rows kernel
    torch.testing.assert_close(quantized(row), torch.ops.quantized.linear_dynamic(row, quantized.packed, REDUCE_RANGE))


@pytest.mark.skipif("onednn" not in torch.backends.quantized.supported_engines, reason="one int8 kernel only")
def test_int8_weight_for_inspection_is_the_memory_that_the_many_rows_kernel_keeps():
    """No third copy of the int8 weights: ``weight`` is the tensor oneDNN's pack holds (and unpacks)."""
    quantized = Int8Linear(nn.Linear(256, 64))
    kept = torch.ops.quantized.linear_unpack(quantized.packed_for_many_rows)[0]
    assert quantized.weight.data_ptr() == kept.data_ptr() and torch.equal(quantized.weight, kept.int_repr())


def test_int8_decoding_with_its_bfloat16_cache_stays_close_to_the_original():
    """One unit per step through the KV cache (bfloat16 keys and values), as generation runs."""
    fixture = load_fixture("ulm_fixture.pt")
    ulm = UnitLM.from_checkpoint(FIXTURES / "ulm_tiny.pt", fast="int8")
    for units, logits in zip(fixture["inputs"]["units"], fixture["expected"]["logits"]):
        ids = ulm.tokenize(units)
        cache = ulm.transformer.new_cache(1, len(ids), kv_cache_dtype(ulm.fast))
        assert cache.keys.dtype == torch.bfloat16
        with torch.inference_mode():
            steps = [ulm.transformer(ids[None, i : i + 1], torch.tensor([i]), cache)[0, 0] for i in range(len(units))]
        stepwise = torch.stack(steps)
        torch.testing.assert_close(stepwise, logits, atol=LOGIT_ATOL["int8"], rtol=0)  # measured: 0.06-0.08
        assert (stepwise.argmax(-1) == logits.argmax(-1)).float().mean() >= 0.9  # measured: 0.95-0.96


def linear_with(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight = nn.Parameter(weight)
    return linear


class SeparateInt8(nn.Module):
    """The layers of a :class:`StackedLinear`, each quantized on its own, outputs side by side."""

    def __init__(self, stacked: StackedLinear):
        super().__init__()
        rows = stacked.weight.detach().split(list(stacked.parts.values()))
        self.layers = nn.ModuleList(Int8Linear(linear_with(weight)) for weight in rows)

    def forward(self, x):
        return torch.cat([layer(x) for layer in self.layers], dim=-1)


def test_fused_projections_equal_the_separate_int8_layers():
    """Stacked rows keep their own scales and share one activation quantization: the same int32 sums."""
    args = ModelArgs(dim=64, n_layers=2, head_dim=16, hidden_dim=96, n_heads=4, n_kv_heads=2, norm_eps=1e-6,
                     vocab_size=50, rope_theta=1e4)  # fmt: skip
    model = random_transformer(args, output_bias=True, seed=0)
    separate = random_transformer(args, output_bias=True, seed=0)
    for block in separate.layers:
        block.attention.wqkv = SeparateInt8(block.attention.wqkv)
        block.feed_forward.w13 = SeparateInt8(block.feed_forward.w13)
    quantize_linears(separate)
    assert make_fast(model, "int8", weight_bound=True) == "int8"
    block = model.layers[0]
    assert isinstance(block.attention.wqkv, Int8Linear) and isinstance(block.feed_forward.w13, Int8Linear)
    assert not hasattr(block.attention, "wq") and not hasattr(block.feed_forward, "w1")
    x = torch.randn(3, 5, 64)
    for fused, layers in ((block.attention.wqkv, separate.layers[0].attention.wqkv.layers),
                          (block.feed_forward.w13, separate.layers[0].feed_forward.w13.layers)):  # fmt: skip
        got = fused(x).split([layer.out_features for layer in layers], dim=-1)
        for got_one, layer in zip(got, layers, strict=True):
            torch.testing.assert_close(got_one, layer(x), atol=1e-6, rtol=0)
    tokens = torch.randint(0, 50, (2, 7))
    with torch.inference_mode():
        torch.testing.assert_close(model(tokens), separate(tokens), atol=1e-5, rtol=0)


def test_int8_layer_saves_and_loads_the_state_dict_of_a_linear():
    """Its state dict is the float layer's (dequantized); loading one quantizes it, with nn.Linear's checks."""
    torch.manual_seed(0)
    linear, other = nn.Linear(256, 64), nn.Linear(256, 64)
    quantized = Int8Linear(linear)
    state = quantized.state_dict()
    assert list(state) == ["weight", "bias"] and state["weight"].dtype == torch.float32
    assert torch.equal(state["weight"], quantized.weight.float() * quantized.scale[:, None])
    assert ((state["weight"] - linear.weight).abs() <= quantized.scale[:, None] / 2 + 1e-7).all()
    quantized.load_state_dict(other.state_dict())
    x = torch.randn(3, 256)
    assert torch.equal(quantized(x), Int8Linear(other)(x))
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        quantized.load_state_dict(nn.Linear(128, 64).state_dict())
    with pytest.raises(RuntimeError, match='Missing key\\(s\\) in state_dict: "bias"'):
        quantized.load_state_dict({"weight": other.weight})
    assert torch.equal(quantized(x), Int8Linear(other)(x))  # the refused loads changed nothing


FAMILIES = {  # loader, official fixture, official_checkpoint of a loaded model, the weights' key in the file
    "unit LM": (UnitLM, "ulm_tiny.pt", lambda m: ulm_checkpoint(m.transformer), "model_state_dict"),
    "ELLA-V": (ELLAV, "ellav_tiny.pt", lambda m: ellav_checkpoint(m.transformer, m.tokenizer), "model_state"),
}


@pytest.mark.parametrize("fast", FORMATS)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_fast_model_saves_an_official_checkpoint_that_loads_back(family, fast, tmp_path):
    """int8 weights are written dequantized (float32), bfloat16 ones as they are; loading the file (int8:
    with fast="int8") gives back the same fast model, number for number."""
    load, fixture, official_checkpoint, weights = FAMILIES[family]
    model = load.from_checkpoint(FIXTURES / fixture, fast=fast)
    torch.save(official_checkpoint(model), tmp_path / "saved.pt")
    saved, official = torch.load(tmp_path / "saved.pt", weights_only=True), load_fixture(fixture)
    assert list(saved) == list(official) and list(saved["model_args"]) == list(official["model_args"])
    assert [(name, t.shape) for name, t in saved[weights].items()] == [(name, t.shape) for name, t in official[weights].items()]
    assert {t.dtype for t in saved[weights].values()} == {torch.float32 if fast == "int8" else torch.bfloat16}
    again = load.from_checkpoint(tmp_path / "saved.pt", fast="int8" if fast == "int8" else False)
    tokens = torch.arange(40)[None] % model.transformer.args.vocab_size  # many rows and one row: both int8 kernels
    with torch.inference_mode():
        assert torch.equal(again.transformer(tokens), model.transformer(tokens))
        assert torch.equal(again.transformer(tokens[:, :1]), model.transformer(tokens[:, :1]))
    if fast == "int8":  # and the float32 weights are the int8 ones times their scales
        quantized = model.transformer.output
        dequantized = load.from_checkpoint(tmp_path / "saved.pt").transformer.output.weight
        assert torch.equal(dequantized, quantized.weight.float() * quantized.scale[:, None])


@pytest.mark.parametrize("fast", FORMATS)
def test_a_fast_model_pickles_whole(fast):
    model = UnitLM.from_checkpoint(FIXTURES / "ulm_tiny.pt", fast=fast)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for again in (torch.load(buffer, weights_only=False), copy.deepcopy(model)):
        assert again.fast == fast
        units = torch.arange(60) % model.k  # prefill and scoring: the many-rows int8 kernel
        assert torch.equal(again.logits(units), model.logits(units))
        assert torch.equal(again.generate([1, 2], 5, seed=0)[0], model.generate([1, 2], 5, seed=0)[0])  # few rows
    if fast == "int8" and "onednn" in torch.backends.quantized.supported_engines:  # packed again for both kernels
        layer = again.transformer.layers[0].attention.wqkv
        kept = torch.ops.quantized.linear_unpack(layer.packed_for_many_rows)[0]
        assert layer.packed is not layer.packed_for_many_rows and layer.weight.data_ptr() == kept.data_ptr()


@pytest.mark.parametrize("load, fixture", [(UnitLM, "ulm_tiny.pt"), (ELLAV, "ellav_tiny.pt")])
def test_generation_makes_its_kv_cache_in_the_format_s_dtype(load, fixture, monkeypatch):
    for fast, dtype in (("int8", KV_CACHE_DTYPE), ("bfloat16", torch.bfloat16), (False, torch.float32)):
        model = load.from_checkpoint(FIXTURES / fixture, fast=fast)
        made, new_cache = [], model.transformer.new_cache
        monkeypatch.setattr(model.transformer, "new_cache", lambda *args: made.append(new_cache(*args)) or made[-1])
        model.generate([1, 2, 3], 4) if load is UnitLM else model.generate([1, 2, 3], max_tokens=4)
        assert [cache.keys.dtype for cache in made] == [dtype]


def test_int8_needs_float32_weights():
    model = nn.Sequential(nn.Linear(4, 4)).to(torch.bfloat16)
    with pytest.raises(ValueError, match="converts float32 weights"):
        make_fast(model, "int8", weight_bound=True)


@pytest.mark.parametrize("fast", FORMATS)
def test_unit_lm_stays_close_to_the_original(fast):
    fixture = load_fixture("ulm_fixture.pt")
    ulm = UnitLM.from_checkpoint(FIXTURES / "ulm_tiny.pt", fast=fast)
    assert ulm.fast == fast and f"dtype={fast}" in repr(ulm)
    for units, logits, loglikelihood in zip(
        fixture["inputs"]["units"], fixture["expected"]["logits"], fixture["expected"]["loglikelihood"]
    ):
        torch.testing.assert_close(ulm.logits(units), logits, atol=LOGIT_ATOL[fast], rtol=0)
        assert ulm.loglikelihood(units) == pytest.approx(loglikelihood, rel=LOGLIKELIHOOD_RTOL[fast])


@pytest.mark.parametrize("fast", FORMATS)
def test_ellav_prefill_stays_close_and_picks_the_same_first_token(fast):
    fixture = load_fixture("ellav_fixture.pt")
    ellav = ELLAV.from_checkpoint(FIXTURES / "ellav_tiny.pt", fast=fast)
    for name, prompts in fixture["inputs"]["prompts"].items():
        _, last, _ = prefill(ellav.transformer, [ellav.encode(p) for p in prompts], max_new_tokens=1)
        expected = fixture["expected"]["prefill_logits"][name]["last_token"]
        torch.testing.assert_close(last, expected, atol=LOGIT_ATOL[fast], rtol=0)
        assert torch.equal(last.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize("fast", FORMATS)
def test_wavlm_features_stay_close_to_the_original(fast):
    fixture = load_fixture("wavlm_fixture.pt")
    encoder = WavLMEncoder.from_checkpoint(FIXTURES / "wavlm_large_tiny.pt", fast=fast)
    assert encoder.fast == fast
    for rate in (16000, 22050):
        features = encoder(fixture["inputs"][f"wav_{rate}"], rate, layer=3)
        expected = fixture["expected"]["large"][f"sr_{rate}"]["layer_3"]
        assert features.dtype == torch.float32 and features.shape == expected.shape
        assert (features - expected).norm() / expected.norm() < FEATURE_RELATIVE_ERROR[fast]


def test_fast_passes_through_the_pipeline_loaders(random_tiny):
    encoder = UnitEncoder.from_pretrained(k=100, lmbda=0, device="cpu", fast=True)
    assert encoder.encoder.fast == choose_format(True, "cpu", weight_bound=False)
    assert UnitLM.from_pretrained(100, 0, device="cpu", fast=True).fast == "int8"
    assert UnitEncoder.from_pretrained(k=100, lmbda=0, device="cpu").encoder.fast is None  # not shared with fast
