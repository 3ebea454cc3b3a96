"""Every loss term against a hand-written reference on small tensors (plain loops, no shared code)."""
from __future__ import annotations

import math

import pytest
import torch

from kd_core import losses

torch.manual_seed(0)


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def ref_kd_kl(s, t, mask, T):
    total, n = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if not mask[b, i]:
                continue
            p = _softmax([v / T for v in t[b, i].tolist()])
            q = _softmax([v / T for v in s[b, i].tolist()])
            total += sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q))
            n += 1
    return total / n * T * T


def test_kd_kl_matches_reference_with_t_squared_and_mask():
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7) * 2
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    for T in (1.0, 2.0, 3.0):
        assert losses.kd_kl(s, t, mask, T).item() == pytest.approx(ref_kd_kl(s, t, mask, T), rel=1e-5)
    # the T^2 factor: at very high T, KL shrinks like 1/T^2 so T^2*KL tends to a constant
    big = [losses.kd_kl(s, t, mask, T).item() for T in (50.0, 100.0)]
    assert big[0] == pytest.approx(big[1], rel=0.01)
    # padded positions do not matter
    s2 = s.clone()
    s2[0, 3:] = 1e3
    assert losses.kd_kl(s2, t, mask, 2.0).item() == pytest.approx(losses.kd_kl(s, t, mask, 2.0).item())


def test_logits_mse_reference():
    s, t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    diffs = [(s[b, i, k] - t[b, i, k]).item() ** 2 for b in range(2) for i in range(3) for k in range(4) if mask[b, i]]
    assert losses.logits_mse(s, t, mask).item() == pytest.approx(sum(diffs) / len(diffs), rel=1e-5)


def test_cosine_reference():
    s, t = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    vals = []
    for b in range(2):
        for i in range(4):
            if mask[b, i]:
                a, c = s[b, i].tolist(), t[b, i].tolist()
                dot = sum(x * y for x, y in zip(a, c))
                vals.append(1 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in c))))
    assert losses.cosine(s, t, mask).item() == pytest.approx(sum(vals) / len(vals), rel=1e-5)
    assert losses.cosine(s, 3 * s, mask).item() == pytest.approx(0.0, abs=1e-6)  # scale-invariant


def test_hidden_mse_with_projection_reference_and_gradient():
    s, t = torch.randn(2, 3, 4), torch.randn(2, 3, 6)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    proj = torch.nn.Linear(4, 6)
    W, bias = proj.weight.detach(), proj.bias.detach()
    vals = []
    for b in range(2):
        for i in range(3):
            if mask[b, i]:
                for o in range(6):
                    y = sum(W[o, k].item() * s[b, i, k].item() for k in range(4)) + bias[o].item()
                    vals.append((y - t[b, i, o].item()) ** 2)
    loss = losses.hidden_mse(s, t, mask, proj)
    assert loss.item() == pytest.approx(sum(vals) / len(vals), rel=1e-5)
    loss.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_attention_mse_excludes_padding_reference():
    B, H, L = 2, 3, 4
    s = torch.softmax(torch.randn(B, H, L, L), -1)
    t = torch.softmax(torch.randn(B, H, L, L), -1)
    am = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    vals = []
    for b in range(B):
        n = int(am[b].sum())
        for h in range(H):
            for q in range(n):
                for k in range(n):
                    vals.append((s[b, h, q, k] - t[b, h, q, k]).item() ** 2)
    assert losses.attention_mse(s, t, am).item() == pytest.approx(sum(vals) / len(vals), rel=1e-5)
    s2 = s.clone()
    s2[0, :, 3, :] = 5.0  # garbage in a padded query row changes nothing
    assert losses.attention_mse(s2, t, am).item() == pytest.approx(losses.attention_mse(s, t, am).item())
    with pytest.raises(ValueError, match="same number of heads"):
        losses.attention_mse(s[:, :2], t, am)


def test_binary_kd_kl_reference():
    s, t = torch.randn(2, 5), torch.randn(2, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    T = 2.0
    vals = []
    for b in range(2):
        for i in range(5):
            if mask[b, i]:
                p = 1 / (1 + math.exp(-t[b, i].item() / T))
                q = 1 / (1 + math.exp(-s[b, i].item() / T))
                vals.append(p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)))
    assert losses.binary_kd_kl(s, t, mask, T).item() == pytest.approx(sum(vals) / len(vals) * T * T, rel=1e-5)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_identical_inputs_give_zero(name):
    x = torch.randn(2, 4, 5)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    fn = losses.LOSSES[name]
    if name == "attention_mse":
        att = torch.softmax(torch.randn(2, 3, 4, 4), -1)
        value = fn(att, att.clone(), mask.long())
    elif name == "binary_kd_kl":
        value = fn(x[..., 0], x[..., 0].clone(), mask, 2.0)
    else:
        value = fn(x, x.clone(), mask)
    assert value.item() == pytest.approx(0.0, abs=1e-6)


# ---- the fused, chunked vocabulary KL ------------------------------------------------------------------
def _vocab_case(rows=37, width=8, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = [torch.randn(rows, width, generator=g).requires_grad_(), torch.randn(vocab, width, generator=g).requires_grad_(),
         torch.randn(vocab, generator=g).requires_grad_()]
    t = [torch.randn(rows, width, generator=g) * 2, torch.randn(vocab, width, generator=g), torch.randn(vocab, generator=g)]
    return s, t


@pytest.mark.parametrize("chunk_rows", [1, 5, 16, 37, 100])  # 5 and 16 do not divide the 37 rows
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_vocab_kd_kl_equals_unfused_in_value_and_gradient(chunk_rows, T):
    (h, w, b), (ht, wt, bt) = _vocab_case()
    ref = losses.kd_kl(torch.nn.functional.linear(h, w, b), torch.nn.functional.linear(ht, wt, bt), None, T)
    ref_grads = torch.autograd.grad(3.0 * ref, (h, w, b))  # a weight outside, as the engine applies it
    fused = losses.vocab_kd_kl(h, w, b, ht, wt, bt, None, T, chunk_rows)
    grads = torch.autograd.grad(3.0 * fused, (h, w, b))
    assert fused.item() == pytest.approx(ref.item(), rel=1e-5)
    for name, got, want in zip(("hidden", "weight", "bias"), grads, ref_grads):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6), name


def test_vocab_kd_kl_excludes_padding_and_keeps_t_squared():
    (h, w, b), (ht, wt, bt) = _vocab_case(rows=12)
    h3, ht3 = h.view(2, 6, -1), ht.view(2, 6, -1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    s_logits, t_logits = torch.nn.functional.linear(h3, w, b), torch.nn.functional.linear(ht3, wt, bt)
    for T in (1.0, 3.0):  # the hand-written reference: mean KL over real tokens times T^2
        want = ref_kd_kl(s_logits.detach(), t_logits, mask, T)
        assert losses.vocab_kd_kl(h3, w, b, ht3, wt, bt, mask, T, 4).item() == pytest.approx(want, rel=1e-5)
    fused = losses.vocab_kd_kl(h3, w, b, ht3, wt, bt, mask, 2.0, 4)
    fused.backward()
    assert h.grad.view(2, 6, -1)[~mask].abs().max() == 0  # padded rows get no gradient
    garbage = h3.detach().clone()
    garbage[~mask] = 1e3
    assert losses.vocab_kd_kl(garbage, w, b, ht3, wt, bt, mask, 2.0, 4).item() == pytest.approx(fused.item())


def test_vocab_kd_kl_of_identical_models_is_zero_with_zero_gradient():
    (h, w, b), _ = _vocab_case()
    loss = losses.vocab_kd_kl(h, w, b, h.detach(), w.detach(), b.detach(), None, 2.0, 8)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    for p in (h, w, b):
        assert p.grad.abs().max() < 1e-6


def test_vocab_kd_kl_under_bf16_autocast_and_no_grad():
    (h, w, b), (ht, wt, bt) = _vocab_case(width=32, vocab=200)
    fp32 = losses.vocab_kd_kl(h, w, b, ht, wt, bt, None, 2.0, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = losses.vocab_kd_kl(h, w, b, ht, wt, bt, None, 2.0, 16)
    assert bf16.dtype == torch.float32 and bf16.item() == pytest.approx(fp32.item(), rel=0.05)  # bf16 matmuls
    bf16.backward()
    assert h.grad.dtype == w.grad.dtype == torch.float32
    with torch.no_grad():  # evaluation: the value only, no gradient work
        assert not losses.vocab_kd_kl(h, w, b, ht, wt, bt, None, 2.0, 16).requires_grad
