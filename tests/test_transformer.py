"""The shared decoder: conventions (RMSNorm, RoPE pairs, GQA mapping), the KV cache, and sampling."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dpslm_utils.transformer import (
    ModelArgs,
    RMSNorm,
    StackedLinear,
    Transformer,
    apply_rotary,
    attention,
    new_generator,
    prefill,
    rotary_angles,
    sample,
)
from dpslm_utils.random_tiny import TRANSFORMER_DIMS, random_transformer

from conftest import load_fixture

ARGS = ModelArgs(**TRANSFORMER_DIMS, vocab_size=37)


@pytest.fixture(scope="module")
def model() -> Transformer:
    return random_transformer(ARGS, output_bias=True, seed=0)


def test_model_args_ignore_dropout_and_max_batch_size_and_reject_unknown_or_missing_keys():
    full = {**TRANSFORMER_DIMS, "vocab_size": 37}
    assert ModelArgs.from_dict({**full, "dropout": 0.1, "max_batch_size": 0}) == ARGS
    with pytest.raises(ValueError, match="missing keys \\['vocab_size'\\]"):
        ModelArgs.from_dict(TRANSFORMER_DIMS)
    with pytest.raises(ValueError, match="unknown keys \\['sliding_window'\\]"):
        ModelArgs.from_dict({**full, "sliding_window": 4096})
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        ModelArgs(**{**full, "n_kv_heads": 3})


def test_rmsnorm_is_computed_in_float32():
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.tensor([[1.0, -2.0, 3.0, 0.5, 0.0, 4.0, -1.0, 2.0]])
    torch.testing.assert_close(norm(x), x / torch.sqrt((x**2).mean() + 1e-6) * norm.weight, atol=1e-6, rtol=0)
    low = x.bfloat16() * 300  # x² overflows nothing in float32, but would lose precision in bfloat16
    normalized = (low.float() * torch.rsqrt(low.float().pow(2).mean() + 1e-6)).bfloat16()
    assert torch.equal(norm.to(torch.bfloat16)(low), normalized * norm.weight)


def test_rope_rotates_consecutive_pairs_by_position_times_theta_power():
    head_dim, theta = 8, 10000.0
    positions = torch.tensor([[0, 3, 9000]])
    cos, sin = rotary_angles(positions, head_dim, theta)
    x = torch.tensor([1.0, 0.0] * (head_dim // 2)).expand(1, 3, 1, head_dim)  # every pair = 1 + 0i
    rotated = apply_rotary(x, cos, sin)
    for t, p in enumerate(positions[0].tolist()):
        for i in range(head_dim // 2):
            angle = p * theta ** (-2 * i / head_dim)
            assert rotated[0, t, 0, 2 * i].item() == pytest.approx(math.cos(angle), abs=2e-3)
            assert rotated[0, t, 0, 2 * i + 1].item() == pytest.approx(math.sin(angle), abs=2e-3)


def test_rope_scores_depend_only_on_relative_position_also_beyond_8000():
    head_dim = 16
    q, k = torch.randn(2, 1, 1, head_dim, generator=torch.Generator().manual_seed(1))

    def score(query_pos: int, key_pos: int) -> float:
        (cq, sq), (ck, sk) = (rotary_angles(torch.tensor([[p]]), head_dim, 10000.0) for p in (query_pos, key_pos))
        return (apply_rotary(q[None], cq, sq) * apply_rotary(k[None], ck, sk)).sum().item()

    assert score(7, 2) == pytest.approx(score(12005, 12000), abs=2e-3)
    assert score(7, 2) != pytest.approx(score(7, 3), abs=1e-2)


def test_grouped_query_head_h_reads_kv_head_h_div_group_size():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, heads, 5, 8, generator=gen) for heads in (4, 2, 2))
    out = attention(q, k, v, mask=None)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    for h in range(4):
        kv = h // 2
        scores = (q[0, h] @ k[0, kv].T / math.sqrt(8)).masked_fill(~causal, float("-inf"))
        torch.testing.assert_close(out[0, h], torch.softmax(scores, -1) @ v[0, kv], atol=1e-5, rtol=0)


def test_padded_batch_equals_the_original_packed_unit_lm_batch():
    checkpoint = load_fixture("ulm_tiny.pt")
    fixture = load_fixture("ulm_fixture.pt")["expected"]
    ulm = Transformer.from_state_dict(checkpoint["model_args"], checkpoint["model_state_dict"], output_bias=False)
    packed = fixture["batch_input_ids"].split(fixture["batch_seqlens"])
    tokens = torch.nn.utils.rnn.pad_sequence(list(packed), batch_first=True)
    with torch.no_grad():
        logits = ulm(tokens)
    expected = fixture["batch_logits"].split(fixture["batch_seqlens"])
    for row, (length, want) in enumerate(zip(fixture["batch_seqlens"], expected)):
        torch.testing.assert_close(logits[row, :length], want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stacked_layers_compute_exactly_as_the_separate_layers(dtype):
    """The stacked projections round as the originals' separate ones, bit for bit."""
    torch.manual_seed(0)
    layers = {name: nn.Linear(64, rows, bias=False).to(dtype) for name, rows in (("wq", 64), ("wk", 32), ("wv", 32))}
    stacked = StackedLinear(**layers)
    assert stacked.parts == {"wq": 64, "wk": 32, "wv": 32} and stacked.weight.shape == (128, 64)
    x = torch.randn(3, 7, 64, dtype=dtype)
    assert torch.equal(stacked(x), torch.cat([layer(x) for layer in layers.values()], dim=-1))
    with pytest.raises(ValueError, match="bias-free"):
        StackedLinear(w1=nn.Linear(4, 4), w3=nn.Linear(4, 4, bias=False))


def test_a_fresh_decoder_draws_its_weights_as_the_originals_layer_by_layer():
    """PyTorch's default initialisation, drawn in the originals' order of layers (w1, w2, w3: w2 between the
    two stacked ones), so a training run starts from the weights the originals' code would draw."""
    torch.manual_seed(0)
    state = Transformer(ARGS, output_bias=True).state_dict()
    torch.manual_seed(0)
    dim, q, kv, hidden = ARGS.dim, ARGS.n_heads * ARGS.head_dim, ARGS.n_kv_heads * ARGS.head_dim, ARGS.hidden_dim
    expected = {"tok_embeddings.weight": nn.Embedding(ARGS.vocab_size, dim).weight}
    for i in range(ARGS.n_layers):
        for name, (rows, columns) in {"attention.wq": (q, dim), "attention.wk": (kv, dim), "attention.wv": (kv, dim),
                                      "attention.wo": (dim, q), "feed_forward.w1": (hidden, dim),
                                      "feed_forward.w2": (dim, hidden), "feed_forward.w3": (hidden, dim)}.items():  # fmt: skip
            expected[f"layers.{i}.{name}.weight"] = nn.Linear(columns, rows, bias=False).weight
    output = nn.Linear(dim, ARGS.vocab_size)
    expected |= {"output.weight": output.weight, "output.bias": output.bias}
    for name, weight in expected.items():
        assert torch.equal(state[name], weight), name


def test_state_dict_holds_the_checkpoint_tensors_in_order():
    """Stacked inside, the original layers outside: the same keys in the same order, each its own tensor."""
    checkpoint = load_fixture("ulm_tiny.pt")
    weights = checkpoint["model_state_dict"]
    model = Transformer.from_state_dict(checkpoint["model_args"], weights, output_bias=False)
    assert "wqkv.weight" in dict(model.layers[0].attention.named_parameters())
    state = model.state_dict()
    assert list(state) == list(weights)
    assert all(torch.equal(state[name], weights[name]) for name in weights)
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in state.values())  # no views


def test_from_state_dict_is_strict(model):
    state = model.state_dict()
    with pytest.raises(ValueError, match="output.bias"):
        Transformer.from_state_dict(ARGS.to_dict(), state, output_bias=False)
    del state["norm.weight"]
    with pytest.raises(ValueError, match="norm.weight"):
        Transformer.from_state_dict(ARGS.to_dict(), state, output_bias=True)


@torch.no_grad()
def test_cached_batched_decoding_equals_full_recomputation(model):
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 37, (n,), generator=gen) for n in (7, 2, 4)]
    continuations = torch.randint(0, 37, (3, 5), generator=gen)
    cache, last, position = prefill(model, prompts, max_new_tokens=5)
    stepwise = [last]
    for step in range(5):
        stepwise.append(model(continuations[:, step : step + 1], position + step, cache)[:, -1])
    for row, prompt in enumerate(prompts):
        full = model(torch.cat([prompt, continuations[row]])[None])[0, len(prompt) - 1 :]
        torch.testing.assert_close(torch.stack([s[row] for s in stepwise]), full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_chunked_prefill_of_prompts_of_different_lengths_equals_one_chunk(model):
    prompts = [torch.arange(11) % 37, torch.arange(3) + 5, torch.arange(6) * 2]
    _, one_chunk, _ = prefill(model, prompts, 1)
    for chunk_size in (1, 4, 5):
        _, chunked, _ = prefill(model, prompts, 1, chunk_size=chunk_size)
        torch.testing.assert_close(chunked, one_chunk, atol=1e-5, rtol=0)


@torch.no_grad()
def test_cache_rejects_positions_beyond_its_size(model):
    cache, _, position = prefill(model, [torch.arange(3)], max_new_tokens=1)
    model(torch.tensor([[1]]), position, cache)
    with pytest.raises(ValueError, match="beyond the KV cache"):
        model(torch.tensor([[1]]), position + 1, cache)


@torch.no_grad()
def test_bfloat16_weights_give_float32_logits_close_to_float32(model):
    tokens = torch.arange(20)[None] % 37
    low = random_transformer(ARGS, output_bias=True, seed=0).to(torch.bfloat16)
    logits = low(tokens)
    assert logits.dtype == torch.float32
    assert (logits - model(tokens)).abs().max() < 0.1 * model(tokens).abs().max()


def test_random_transformer_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = (random_transformer(ARGS, output_bias=False, seed=s).state_dict() for s in (5, 5, 6))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not torch.equal(a["layers.0.attention.wq.weight"], c["layers.0.attention.wq.weight"])


# --- sampling -------------------------------------------------------------------------------

PROBS = torch.tensor([[0.1, 0.45, 0.25, 0.0, 0.2]])  # sorted: 1, 2, 4, 0; mass before them 0, .45, .7, .9


def draws(top_p: float = 1.0, top_k: int | None = None, n: int = 4000) -> torch.Tensor:
    logits = PROBS.clamp_min(1e-30).log().expand(n, -1)
    return sample(logits, 1.0, top_p, top_k, new_generator(0, torch.device("cpu")))


def test_temperature_zero_is_argmax_and_top_p_zero_or_top_k_one_keep_only_the_best():
    logits = torch.randn(50, 9, generator=torch.Generator().manual_seed(4))
    assert torch.equal(sample(logits, 0.0), logits.argmax(-1))
    gen = new_generator(0, torch.device("cpu"))
    assert torch.equal(sample(logits, 1.0, top_p=0.0, generator=gen), logits.argmax(-1))
    assert torch.equal(sample(logits, 5.0, top_k=1, generator=gen), logits.argmax(-1))


@pytest.mark.parametrize("top_p, kept", [(0.3, {1}), (0.5, {1, 2}), (0.8, {1, 2, 4}), (0.95, {0, 1, 2, 4})])
def test_top_p_keeps_a_token_when_the_mass_before_it_is_at_most_top_p(top_p, kept):
    assert set(draws(top_p=top_p).tolist()) == kept


def test_top_p_and_top_k_renormalise_what_they_keep():
    for drawn in (draws(top_p=0.5), draws(top_k=2)):
        assert set(drawn.tolist()) == {1, 2}
        assert (drawn == 1).float().mean().item() == pytest.approx(0.45 / 0.7, abs=0.03)


def test_full_sampling_follows_the_probabilities_and_is_reproducible_without_global_rng():
    state = torch.random.get_rng_state()
    first, second = draws(), draws()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first, second)
    frequencies = torch.bincount(first, minlength=5).float() / len(first)
    torch.testing.assert_close(frequencies, PROBS[0], atol=0.03, rtol=0)


def test_attention_with_a_padding_mask_equals_explicit_softmax():
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, 2, n, 4, generator=gen) for n in (1, 6, 6))
    mask = torch.tensor([[True] * 3 + [False] * 3, [True] * 6])[:, None, None, :]
    expected = torch.softmax((q @ k.transpose(-1, -2) / 2).masked_fill(~mask, float("-inf")), -1) @ v
    torch.testing.assert_close(attention(q, k, v, mask), expected, atol=1e-6, rtol=0)


def test_the_xformers_path_builds_the_same_attention(monkeypatch):
    """xformers is not installed here: a reference stands in for its kernel to check our side of the call."""
    from dpslm_utils import transformer

    causal = object()

    def reference_kernel(q, k, v, attn_bias):  # xformers layout [B, M, H, K]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if attn_bias is causal:
            scores = scores.masked_fill(~torch.ones(scores.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
        else:
            assert attn_bias.stride(-2) % 8 == 0 and attn_bias.shape == scores.shape
            scores = scores + attn_bias
        return (torch.softmax(scores, -1) @ v).transpose(1, 2)

    monkeypatch.setattr(transformer, "memory_efficient_attention", reference_kernel)
    monkeypatch.setattr(transformer, "LowerTriangularMask", lambda: causal, raising=False)
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, heads, 5, 8, generator=gen) for heads in (4, 2, 2))
    mask = torch.rand(2, 1, 5, 5, generator=gen) > 0.3
    mask[..., 0] = True
    for attn_mask in (None, mask):
        expected = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None, enable_gqa=True
        )
        torch.testing.assert_close(transformer._xformers_attention(q, k, v, attn_mask), expected, atol=1e-5, rtol=0)
