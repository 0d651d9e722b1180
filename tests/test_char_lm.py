"""char-lm workload: data layout, masking, determinism, precision, FLOP formula."""

from __future__ import annotations

import math

import pytest
import torch

from bench.errors import ConfigError
from bench.workloads import build_workload, workload_options
from bench.workloads.char_lm import PAD_ID, VAL_EVERY, VOCAB_SIZE, CharLMWorkload, build

# Small enough that building and a forward pass take milliseconds.
SMALL = dict(samples=64, val_samples=16, seq_len=32, d_model=32, n_layers=2, n_heads=4, min_len=4)


@pytest.fixture(scope="module")
def small() -> CharLMWorkload:
    return build(**SMALL)


def _model(w: CharLMWorkload, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    return w.make_model().to(dtype)


def _manual_loss_sum(model, tokens, lengths) -> torch.Tensor:
    """Cross-entropy summed over real targets, with the mask built from lengths."""
    logits = model(tokens[:, :-1])
    logp = torch.log_softmax(logits.double(), dim=-1)
    targets = tokens[:, 1:]
    mask = torch.arange(targets.shape[1])[None, :] < (lengths - 1)[:, None]
    picked = logp.gather(2, targets.clamp(max=VOCAB_SIZE - 1).unsqueeze(-1)).squeeze(-1)
    return -(picked * mask).sum()


# -- data ------------------------------------------------------------------------------


def test_shapes_dtypes_and_padding_layout(small):
    seq_len = SMALL["seq_len"]
    for (tokens, lengths), n in (
        (small.train, SMALL["samples"]),
        (small.val, SMALL["val_samples"]),
    ):
        assert tokens.shape == (n, seq_len + 1) and tokens.dtype == torch.int64
        assert lengths.shape == (n,) and lengths.dtype == torch.int64
        assert int(lengths.min()) >= SMALL["min_len"] and int(lengths.max()) <= seq_len + 1
        real = torch.arange(seq_len + 1)[None, :] < lengths[:, None]
        assert bool((tokens[real] < 256).all()) and bool((tokens[real] >= 0).all())
        assert bool((tokens[~real] == PAD_ID).all())
    assert small.unit == "token" and small.n_train == SMALL["samples"]


def test_default_corpus_is_python_source():
    w = build(samples=32, val_samples=4)
    tokens, lengths = w.train
    text = b"".join(bytes(tokens[i, : lengths[i]].tolist()) for i in range(32))
    assert b"def " in text or b"import " in text
    assert len(w.corpus_sha256) == 64
    assert w.corpus_bytes == int(torch.cat([w.train[1], w.val[1]]).sum())


def test_lengths_vary(small):
    lengths = small.train[1]
    assert len(set(lengths.tolist())) > 10


def test_same_seed_same_tensors_different_seed_different():
    a, b, c = build(**SMALL), build(**SMALL), build(**{**SMALL, "data_seed": 1})
    for x, y in zip(a.train + a.val, b.train + b.val, strict=True):
        assert torch.equal(x, y)
    assert a.corpus_sha256 == b.corpus_sha256
    assert not torch.equal(a.train[1], c.train[1])
    assert not torch.equal(a.train[0], c.train[0])


def test_validation_set_does_not_depend_on_samples():
    a, b = build(**SMALL), build(**{**SMALL, "samples": 500})
    assert torch.equal(a.val[0], b.val[0]) and torch.equal(a.val[1], b.val[1])
    # and the first training documents are the same ones
    assert torch.equal(a.train[0], b.train[0][: SMALL["samples"]])


def test_documents_are_consecutive_text_held_out_every_tenth(tmp_path):
    text = bytes(range(32, 127)) * 40
    (tmp_path / "a.txt").write_bytes(text)
    w = build(samples=20, val_samples=3, seq_len=16, min_len=4, corpus=str(tmp_path / "a.txt"))
    # Rebuild the document order: val documents sit at indices 0, 10, 20.
    train, val = list(zip(*w.train, strict=True)), list(zip(*w.val, strict=True))
    docs = []
    for i in range(len(train) + len(val)):
        if i % VAL_EVERY == 0 and i // VAL_EVERY < len(val):
            docs.append(val[i // VAL_EVERY])
        else:
            docs.append(train[i - min(i // VAL_EVERY + 1, len(val))])
    stream = b"".join(bytes(t[:n].tolist()) for t, n in docs)
    assert stream == text[: len(stream)]


def test_corpus_folder_is_read_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"B" * 3000)
    (tmp_path / "a.txt").write_bytes(b"A" * 1000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_bytes(b"C" * 3000)
    (tmp_path / ".hidden").write_bytes(b"H" * 3000)
    w = build(samples=40, val_samples=4, seq_len=64, min_len=32, corpus=str(tmp_path))
    tokens, lengths = w.val
    first = bytes(tokens[0, : lengths[0]].tolist())
    assert set(first) == {ord("A")}
    real = torch.arange(65)[None, :] < w.train[1][:, None]
    seen = set(w.train[0][real].tolist())
    assert ord("H") not in seen and {ord("A"), ord("B")} <= seen


def test_missing_corpus_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="corpus"):
        build(**{**SMALL, "corpus": str(tmp_path / "nope")})


def test_too_small_corpus_is_a_config_error(tmp_path):
    (tmp_path / "tiny.txt").write_bytes(b"x" * 100)
    with pytest.raises(ConfigError, match="corpus.*100 bytes"):
        build(**{**SMALL, "corpus": str(tmp_path / "tiny.txt")})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("samples", 0),
        ("val_samples", 0),
        ("seq_len", 0),
        ("seq_len", 2.5),
        ("d_model", 0),
        ("n_layers", 0),
        ("n_heads", 0),
        ("n_heads", 3),
        ("min_len", 1),
        ("min_len", 34),
        ("data_seed", -1),
        ("dropout", 1.5),
        ("dropout", "x"),
        ("corpus", 3),
        ("corpus", ""),
        ("samples", True),
    ],
)
def test_bad_options_name_the_option(key, value):
    with pytest.raises(ConfigError, match=key):
        build(**{**SMALL, key: value})


def test_registry_knows_char_lm():
    opts = workload_options("char-lm")
    assert {"seq_len", "d_model", "n_layers", "n_heads", "min_len", "corpus", "data_seed"} <= set(
        opts
    )
    w = build_workload("char-lm", samples=8, options={"val_samples": 2, "seq_len": 16})
    assert isinstance(w, CharLMWorkload) and w.train[0].shape == (8, 17)
    with pytest.raises(ConfigError, match="did you mean 'd_model'"):
        build_workload("char-lm", options={"d_modle": 3})


# -- loss and masking ---------------------------------------------------------------


def test_loss_sum_matches_manual_masked_cross_entropy(small):
    model = _model(small, dtype=torch.float64)
    tokens, lengths = small.train
    got = small.loss_sum(model, (tokens, lengths))
    want = _manual_loss_sum(model, tokens, lengths)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_padding_content_does_not_change_loss_or_gradients(small):
    model = _model(small, dtype=torch.float64)
    tokens, lengths = small.train
    pad = torch.arange(tokens.shape[1])[None, :] >= lengths[:, None]
    assert bool(pad.any())
    # Padding becomes arbitrary bytes: causal attention must keep it from reaching any
    # real position, and the length mask must keep it out of the targets.
    garbage = torch.randint(0, 256, tokens.shape, generator=torch.Generator().manual_seed(5))
    other = torch.where(pad, garbage, tokens)
    assert not torch.equal(other, tokens)

    def loss_and_grads(t):
        model.zero_grad()
        loss = small.loss_sum(model, (t, lengths))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    (l1, g1), (l2, g2) = loss_and_grads(tokens), loss_and_grads(other)
    torch.testing.assert_close(l1, l2, rtol=1e-13, atol=0)
    # Gradients too, except the token table's rows of the garbage ids: those inputs sit
    # at padded positions, whose outputs are masked, so their rows get exactly zero.
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_units_counts_real_targets_on_device_without_sync(small):
    tokens, lengths = small.train
    u = small.units((tokens, lengths))
    assert isinstance(u, torch.Tensor) and u.dim() == 0 and u.device == tokens.device
    assert int(u) == sum(int(n) - 1 for n in lengths) == int((tokens[:, 1:] != PAD_ID).sum())


def test_token_normalised_accumulation_equals_big_batch(small):
    """Summed losses over the window's token count = the big batch's mean token loss;
    the per-micro-batch mean / k convention differs when lengths differ."""
    model = _model(small, dtype=torch.float64)
    tokens, lengths = small.train
    parts = [(tokens[i : i + 16], lengths[i : i + 16]) for i in range(0, 64, 16)]

    def grads(loss_fn):
        model.zero_grad()
        loss_fn()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    big = grads(lambda: (small.loss_sum(model, small.train) / small.units(small.train)).backward())
    window = sum(small.units(p) for p in parts)
    tok = grads(lambda: [(small.loss_sum(model, p) / window).backward() for p in parts])
    micro = grads(
        lambda: [(small.loss_sum(model, p) / small.units(p) / 4).backward() for p in parts]
    )
    torch.testing.assert_close(tok, big, rtol=1e-10, atol=1e-14)
    assert (micro - big).abs().max() > 1e-6 * big.abs().max()


# -- precision ------------------------------------------------------------------------


def test_float64_forward_and_backward(small):
    model = _model(small, dtype=torch.float64)
    loss = small.loss_sum(model, small.val)
    assert loss.dtype == torch.float64 and math.isfinite(loss.item())
    loss.backward()
    assert all(p.grad.dtype == torch.float64 for p in model.parameters())
    # An untrained model is near the uniform distribution over the 257 symbols.
    mean = loss.item() / int(small.units(small.val))
    assert abs(mean - math.log(VOCAB_SIZE)) < 0.1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_on_cpu(small, dtype):
    model = _model(small)
    ref = small.loss_sum(model, small.val)
    with torch.autocast("cpu", dtype=dtype):
        loss = small.loss_sum(model, small.val)
    loss.backward()
    assert loss.dtype == torch.float32  # cross_entropy runs in float32 under autocast
    assert math.isfinite(loss.item())
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=0)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_short_adamw_run_lowers_loss():
    w = build(samples=256, val_samples=32, seq_len=64, d_model=32, n_layers=1, n_heads=2)
    model = _model(w)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)

    def val_loss():
        with torch.no_grad():
            return float(w.loss_sum(model, w.val) / w.units(w.val))

    before = val_loss()
    for _ in range(60):
        idx = torch.randint(0, w.n_train, (32,), generator=g)
        batch = (w.train[0][idx], w.train[1][idx])
        loss = w.loss_sum(model, batch) / w.units(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = val_loss()
    assert before > 0.95 * math.log(VOCAB_SIZE)
    assert after < 0.7 * before, (before, after)


def test_dropout_is_off_by_default_and_on_when_asked(small):
    model = _model(small).train()
    batch = (small.val[0][:4], small.val[1][:4])
    assert torch.equal(small.loss_sum(model, batch), small.loss_sum(model, batch))
    w = build(**{**SMALL, "dropout": 0.5})
    noisy = _model(w).train()
    assert not torch.equal(w.loss_sum(noisy, batch), w.loss_sum(noisy, batch))


# -- FLOPs ----------------------------------------------------------------------------


def test_flop_counter_agrees_with_palm_formula():
    """One forward + backward at full length, counted by torch's FlopCounterMode.

    The math SDPA backend is forced: on CPU the default kernel
    (_scaled_dot_product_flash_attention_for_cpu) has no FLOP formula registered in
    torch.utils.flop_counter, so attention would count as zero. The math backend runs
    QK^T and AV as plain batched matmuls over the full T x T (the causal mask is added,
    not skipped), 4·T·d per token per layer forward and twice that backward: exactly
    PaLM's 12·L·H·Q·T. The counter counts matmul FLOPs only, so the formula exceeds it
    by 6 x (bias + LayerNorm parameters), which are in N but do no matmul; it also
    ignores softmax, GELU and LayerNorm arithmetic, which the formula ignores too.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    w = build(samples=8, val_samples=2, seq_len=64, d_model=64, n_layers=2, n_heads=4)
    model = _model(w)
    b, t = 4, 64
    tokens = torch.randint(0, 256, (b, t + 1), generator=torch.Generator().manual_seed(0))
    lengths = torch.full((b,), t + 1)
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        w.loss_sum(model, (tokens, lengths)).backward()
    counted = counter.get_total_flops() / (b * t)
    formula = w.flops_per_token_formula(model)
    no_matmul = sum(
        m.bias.numel() if isinstance(m, torch.nn.Linear) and m.bias is not None else 0
        for m in model.modules()
    ) + sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, torch.nn.LayerNorm)
        for p in m.parameters()
    )
    assert no_matmul > 0
    # Exact: the counter is the formula minus the parameters that do no matmul.
    assert counted == formula - 6 * no_matmul
    # The stated tolerance for the formula as an estimate: within 2% at these sizes.
    assert abs(formula - counted) / counted < 0.02


def test_flop_formula_terms():
    w = build(samples=8, val_samples=2, seq_len=32, d_model=48, n_layers=3, n_heads=6)
    model = _model(w)
    d, layers, t = 48, 3, 32
    # per block: qkv + proj + 2 MLP matmuls = 12 d^2 weights, 9d biases, 4d LayerNorm;
    # then the final LayerNorm (2d) and the untied head (d x 257, no bias)
    n = layers * (12 * d * d + 13 * d) + 2 * d + d * VOCAB_SIZE
    assert model.non_embedding_params() == n
    assert w.flops_per_token_formula(model) == 6 * n + 12 * layers * 6 * (d // 6) * t


# -- CUDA -----------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float64_matches_cpu_and_autocast_runs(small):
    cpu_model = _model(small, dtype=torch.float64)
    cuda_model = _model(small, dtype=torch.float64).cuda()
    batch = small.train
    cuda_batch = tuple(x.cuda() for x in batch)
    ref = small.loss_sum(cpu_model, batch)
    got = small.loss_sum(cuda_model, cuda_batch)
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-10, atol=0)
    u = small.units(cuda_batch)
    assert u.device.type == "cuda" and int(u) == int(small.units(batch))
    model = _model(small).cuda()
    for dtype in (torch.bfloat16, torch.float16):
        model.zero_grad()
        with torch.autocast("cuda", dtype=dtype):
            loss = small.loss_sum(model, cuda_batch)
        loss.backward()
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        torch.testing.assert_close(loss.cpu().double(), ref, rtol=2e-2, atol=0)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
