"""Layer-wise distillation (hidden-state MSE, attention KL, identity / uniform / dynamic layer
maps) against hand computations in numpy, and the train step against transformers' PyTorch
hidden states and attention probabilities of the same weights (the independent reference)."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from _helpers_models import tiny_config

from mvp_jax.config import ConfigError, DistillConfig, PruneConfig, load_config
from mvp_jax.errors import UserError
from mvp_jax.models import build_module, load_pretrained
from mvp_jax.models.bert import attention_scores_of
from mvp_jax.pruning.pruner import Pruner
from mvp_jax.training.distill import (
    LAYER_MAPS,
    attention_kl,
    check_layer_distillation,
    dynamic_map,
    hidden_mse,
    layer_distillation,
    uniform_map,
)
from mvp_jax.training.optim import make_optimizer
from mvp_jax.training.train import init_state, make_train_step

NEG = np.finfo(np.float32).min

# ----------------------------------------------------------------------------------------------
# numpy references (float64, padding removed by indexing, not by masking)
# ----------------------------------------------------------------------------------------------


def np_mse(s, t, mask):
    """Per example: the mean of (s - t)^2 over the real tokens and all features."""
    return np.array([np.mean((np.float64(s[b]) - t[b])[mask[b] > 0] ** 2) for b in range(len(s))])


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_attention_kl(p_s, p_t, mask):
    """Per example: KL(p_t || p_s) over the real keys, averaged over heads and real queries;
    ``p`` are distributions ``[B, heads, L, L]`` (zero on padded keys)."""
    out = []
    for b in range(len(p_s)):
        real = np.flatnonzero(mask[b])
        ps = np.float64(p_s[b])[:, real][:, :, real]
        pt = np.float64(p_t[b])[:, real][:, :, real]
        out.append(np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=-1)))
    return np.array(out)


def np_dynamic(student_hidden, teacher_hidden, mask, weight):
    """CoFi's greedy map by brute force: teacher layer i -> the student layer j >= previous
    match (j >= 1) of least sum_b w_b MSE_b."""
    match, prev = [], 1
    for t in teacher_hidden[1:]:
        costs = {j: np.sum(weight * np_mse(student_hidden[j], t, mask))
                 for j in range(prev, len(student_hidden))}
        prev = min(costs, key=lambda j: (costs[j], j))
        match.append(prev)
    return match


# ----------------------------------------------------------------------------------------------
# The losses on small arrays
# ----------------------------------------------------------------------------------------------

MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], np.int32)


def test_hidden_mse_matches_numpy_and_ignores_padding():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    got = np.asarray(hidden_mse(s, t, MASK))
    np.testing.assert_allclose(got, np_mse(s, t, MASK), rtol=1e-6)
    # row 1 by hand: 3 real tokens x 4 features
    assert got[1] == pytest.approx(np.sum((s[1, :3] - t[1, :3]) ** 2) / 12, rel=1e-6)
    s2 = s.copy()
    s2[MASK == 0] += 100.0  # padded positions do not count
    np.testing.assert_array_equal(np.asarray(hidden_mse(s2, t, MASK)), got)


def test_attention_kl_matches_numpy_and_ignores_padding():
    rng = np.random.default_rng(1)
    raw_s, raw_t = rng.normal(size=(2, 3, 2, 5, 5)).astype(np.float32) * 2
    bias = np.where(MASK[:, None, None, :] > 0, 0.0, NEG).astype(np.float32)
    got = np.asarray(attention_kl(raw_s + bias, raw_t + bias, MASK))
    # reference: the distributions over the real keys only
    ref = np_attention_kl(np_softmax(np.where(bias < 0, -np.inf, raw_s)),
                          np_softmax(np.where(bias < 0, -np.inf, raw_t)), MASK)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert np.all(got[:2] > 0) and got[2] == 0  # one real key: both attend only to it
    # padded keys and padded queries do not count, whatever their scores
    pad_q = (MASK == 0)[:, None, :, None]
    noisy_s = np.where(pad_q, 50.0, raw_s + bias)
    noisy_t = np.where(pad_q, -30.0, raw_t + bias)
    np.testing.assert_allclose(np.asarray(attention_kl(noisy_s, noisy_t, MASK)), got, rtol=1e-6)
    # the same distributions give 0, and its gradient is finite
    assert np.allclose(np.asarray(attention_kl(raw_t + bias, raw_t + bias, MASK)), 0, atol=1e-6)
    grad = jax.grad(lambda x: attention_kl(x, raw_t + bias, MASK).sum())(raw_s + bias)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_uniform_map():
    assert uniform_map(2, 2) == (0, 1, 2)  # identity
    assert uniform_map(3, 12) == (0, 4, 8, 12)  # TinyBERT's g(m) = m N / M
    assert uniform_map(4, 6) == (0, 1, 3, 4, 6)  # floor
    assert set(LAYER_MAPS) == set(DistillConfig.LAYER_MAPS)


def constructed_hidden():
    """Teacher layers i = 1..4 with every real value i; student layers 1..4 with values
    2, 1, 0 (a layer that lost all its units), 3.6, and 100 on the padded tokens of layer 2
    (which, if counted, would move teacher layer 1's match)."""
    shape = (3, 5, 4)
    teacher = [np.full(shape, float(i), np.float32) for i in range(5)]
    student = [np.full(shape, v, np.float32) for v in (0.0, 2.0, 1.0, 0.0, 3.6)]
    student[2][MASK == 0] = 100.0
    return student, teacher


def test_dynamic_map_picks_the_expected_layers():
    student, teacher = constructed_hidden()
    weight = np.ones(3, np.float32)
    cost = np.array([[np.sum(np_mse(s, t, MASK)) for s in student[1:]] for t in teacher[1:]])
    # t1 = 1: s2 exact; t2 = 2: s1 is exact but shallower than s2, so s2 (1 from 2) beats s4;
    # t3 = 3: s4 (0.36); t4 = 4: s4, the only one left
    assert np_dynamic(student, teacher, MASK, weight) == [2, 2, 4, 4]
    np.testing.assert_array_equal(np.asarray(dynamic_map(jnp.asarray(cost))), [2, 2, 4, 4])
    # ties go to the shallowest; the unconstrained argmin would not be monotone
    np.testing.assert_array_equal(np.asarray(dynamic_map(jnp.array([[1.0, 1.0], [0.0, 5.0]]))),
                                  [1, 1])
    np.testing.assert_array_equal(np.asarray(dynamic_map(jnp.array([[5.0, 1.0], [0.0, 5.0]]))),
                                  [2, 2])
    hidden, att = layer_distillation("dynamic", student, teacher, MASK, weight)
    expected = (np_mse(student[0], teacher[0], MASK)
                + sum(np_mse(student[j], teacher[i + 1], MASK)
                      for i, j in enumerate([2, 2, 4, 4]))) / 5
    assert att is None
    np.testing.assert_allclose(np.asarray(hidden), expected, rtol=1e-6)


def test_layer_distillation_uniform_and_dynamic_match_numpy():
    """A 2-layer student and a 4-layer teacher: uniform pairs (0,0), (1,2), (2,4) for the
    hidden states and (1,2), (2,4) for attention; dynamic pairs from the brute-force map."""
    rng = np.random.default_rng(2)
    B, L, H, heads = 3, 5, 4, 2
    sh = [rng.normal(size=(B, L, H)).astype(np.float32) for _ in range(3)]
    th = [rng.normal(size=(B, L, H)).astype(np.float32) for _ in range(5)]
    bias = np.where(MASK[:, None, None, :] > 0, 0.0, NEG).astype(np.float32)
    ss = [rng.normal(size=(B, heads, L, L)).astype(np.float32) + bias for _ in range(2)]
    ts = [rng.normal(size=(B, heads, L, L)).astype(np.float32) + bias for _ in range(4)]
    probs = [np_softmax(np.where(bias < 0, -np.inf, x)) for x in ss + ts]
    ps, pt = probs[:2], probs[2:]
    weight = np.array([1.0, 1.0, 0.5], np.float32)

    hidden, att = layer_distillation("uniform", sh, th, MASK, weight, ss, ts)
    np.testing.assert_allclose(np.asarray(hidden), sum(
        np_mse(sh[s], th[t], MASK) for s, t in [(0, 0), (1, 2), (2, 4)]) / 3, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(att), (np_attention_kl(ps[0], pt[1], MASK)
                                                 + np_attention_kl(ps[1], pt[3], MASK)) / 2,
                               rtol=1e-5)

    match = np_dynamic(sh, th, MASK, weight)
    hidden, att = layer_distillation("dynamic", sh, th, MASK, weight, ss, ts)
    np.testing.assert_allclose(np.asarray(hidden), (np_mse(sh[0], th[0], MASK) + sum(
        np_mse(sh[j], th[i + 1], MASK) for i, j in enumerate(match))) / 5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(att), sum(
        np_attention_kl(ps[j - 1], pt[i], MASK) for i, j in enumerate(match)) / 4, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# The train step against transformers' hidden states and attentions
# ----------------------------------------------------------------------------------------------

NUM_LABELS = 3


def save_bert(out_dir, layers, seed):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = tiny_config(num_hidden_layers=layers, num_labels=NUM_LABELS, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, attn_implementation="eager")
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # LayerNorm scales near 1, so that attention is far from uniform
        for name, p in model.named_parameters():
            p.normal_(1.0 if "LayerNorm.weight" in name else 0.0, 0.2)
    model.save_pretrained(out_dir)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """student (2 layers), teacher2 (2 layers), teacher4 (4 layers): (torch model, Pretrained)."""
    root = tmp_path_factory.mktemp("layer_distill")
    out = {}
    for name, layers, seed in (("student", 2, 0), ("teacher2", 2, 1), ("teacher4", 4, 2)):
        torch_model = save_bert(root / name, layers, seed)
        out[name] = (torch_model, load_pretrained(root / name, head="classification",
                                                  num_labels=NUM_LABELS))
    return out


def make_batch(accum=2, B=3, L=7, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 99, (accum, B, L)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, 1, 4:] = 0
    mask[1, 0, 2:] = 0
    mask[1, 2, 5:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
            "example_weight": np.array([[1, 1, 1], [1, 0, 1]], np.float32),  # one padding row
            "labels": rng.integers(0, NUM_LABELS, (accum, B)).astype(np.int32)}


def torch_forward(model, ids, mask):
    with torch.no_grad():
        out = model(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                    output_hidden_states=True, output_attentions=True)
    return (out.logits.numpy().astype(np.float64), [h.numpy() for h in out.hidden_states],
            [a.numpy() for a in out.attentions])


def reference_parts(models, teacher, batch, layer_map, T):
    """(task, kd, hidden, attention) of the step, from torch outputs and numpy formulas."""
    s_model, t_model = models["student"][0], models[teacher][0]
    denom = batch["example_weight"].sum()
    parts = np.zeros(4)
    for k in range(batch["input_ids"].shape[0]):
        ids, mask, w = batch["input_ids"][k], batch["attention_mask"][k], batch["example_weight"][k]
        s_logits, s_hidden, s_att = torch_forward(s_model, ids, mask)
        t_logits, t_hidden, t_att = torch_forward(t_model, ids, mask)
        log_q = np.log(np_softmax(s_logits))
        task = -log_q[np.arange(len(ids)), batch["labels"][k]]
        p_t, q_t = np_softmax(t_logits / T), np_softmax(s_logits / T)
        kd = T**2 * np.sum(p_t * (np.log(p_t) - np.log(q_t)), axis=-1)
        M, N = len(s_hidden) - 1, len(t_hidden) - 1
        if layer_map == "dynamic":
            match = np_dynamic(s_hidden, t_hidden, mask, w)
            pairs = [(0, 0)] + [(j, i + 1) for i, j in enumerate(match)]
        else:
            pairs = [(s, s * N // M) for s in range(M + 1)]
        hidden = sum(np_mse(s_hidden[s], t_hidden[t], mask) for s, t in pairs) / len(pairs)
        att = sum(np_attention_kl(s_att[s - 1], t_att[t - 1], mask)
                  for s, t in pairs[1:]) / (len(pairs) - 1)
        parts += [np.sum(w * x) / denom for x in (task, kd, hidden, att)]
    return parts


def step_for(models, teacher, distill, freeze_embeddings=True):
    student = models["student"][1]
    opt = make_optimizer(learning_rate=1e-3, total_steps=10, weight_decay=0.0,
                         freeze_embeddings=freeze_embeddings)
    state = init_state(student.params, {}, opt, seed=0)
    dense = Pruner.from_config(PruneConfig(method="none"), student.module, total_steps=10)
    step = make_train_step(student.module, "classification", dense, opt,
                           teacher=models[teacher][1].module, distill=distill)
    return step, state, models[teacher][1].params


@pytest.mark.parametrize("teacher,layer_map,alphas", [
    ("teacher2", "identity", (2.0, 30.0)),
    # a deeper teacher, the map from hidden states, only attention logged (uniform: numpy above)
    ("teacher4", "dynamic", (0.0, 30.0)),
])
def test_train_step_loss_is_the_weighted_sum_of_independent_parts(models, teacher, layer_map,
                                                                   alphas):
    a_hidden, a_attention = alphas
    distill = DistillConfig(alpha_ce=0.3, alpha_distil=0.7, temperature=2.0,
                            alpha_hidden=a_hidden, alpha_attention=a_attention,
                            layer_map=layer_map)
    step, state, t_params = step_for(models, teacher, distill)
    batch = make_batch()
    _, metrics = jax.jit(step)(state, batch, t_params)
    task, kd, hidden, att = reference_parts(models, teacher, batch, layer_map, 2.0)
    expected = 0.3 * task + 0.7 * kd + a_hidden * hidden + a_attention * att
    assert float(metrics["loss"]) == pytest.approx(expected, rel=2e-5)
    assert float(metrics["task_loss"]) == pytest.approx(task, rel=2e-5)
    assert float(metrics["distil_loss"]) == pytest.approx(kd, rel=1e-4, abs=1e-7)
    used = {name for name, a in (("hidden_loss", a_hidden), ("attention_loss", a_attention))
            if a > 0}
    assert {"hidden_loss", "attention_loss"} & set(metrics) == used  # logged only when used
    if a_hidden:
        assert float(metrics["hidden_loss"]) == pytest.approx(hidden, rel=2e-5)
        assert hidden > 1e-3
    if a_attention:
        assert float(metrics["attention_loss"]) == pytest.approx(att, rel=1e-4)
        assert att > 1e-5


def test_zero_weights_give_the_logits_only_step_exactly(models):
    """alpha_hidden = alpha_attention = 0: the same lowered program, state and metrics as the
    step built from a distill section with only the logits-distillation keys (the step before
    layer-wise distillation existed), whose loss is alpha_ce task + alpha_distil kd."""
    old = SimpleNamespace(alpha_ce=0.3, alpha_distil=0.7, temperature=2.0)
    new = DistillConfig(alpha_ce=0.3, alpha_distil=0.7, temperature=2.0, layer_map="dynamic")
    batch = make_batch()
    results = []
    for distill in (old, new):
        step, state, t_params = step_for(models, "teacher2", distill)
        lowered = jax.jit(step).lower(state, batch, t_params)
        results.append((lowered.as_text(), *lowered.compile()(state, batch, t_params)))
    (hlo_a, state_a, met_a), (hlo_b, state_b, met_b) = results
    assert hlo_a == hlo_b
    task, kd, _, _ = reference_parts(models, "teacher2", batch, "identity", 2.0)
    assert float(met_b["loss"]) == pytest.approx(0.3 * task + 0.7 * kd, rel=2e-5)
    assert met_a.keys() == met_b.keys() and "hidden_loss" not in met_b
    for k in met_a:
        np.testing.assert_array_equal(met_a[k], met_b[k])
    for a, b in zip(jax.tree_util.tree_leaves(state_a), jax.tree_util.tree_leaves(state_b)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("term", ["hidden", "attention"])
def test_layer_loss_trains_the_student_and_never_the_teacher(models, term):
    """Only the layer-wise term (alpha_ce = alpha_distil = 0): with Adam and no weight decay a
    weight moves iff its gradient is non-zero. The hidden-state MSE reaches every encoder
    weight but not the pooler or classifier; the attention KL reaches the attention scores'
    Q/K of every layer and all of layer 0, not the last layer's value, FFN, pooler or
    classifier. The teacher gets no gradient (stop_gradient), though the loss depends on it."""
    distill = SimpleNamespace(alpha_ce=0.0, alpha_distil=0.0, temperature=2.0,
                              alpha_hidden=float(term == "hidden"),
                              alpha_attention=float(term == "attention"), layer_map="identity")
    step, state, t_params = step_for(models, "teacher2", distill, freeze_embeddings=False)
    batch = make_batch()
    new, metrics = jax.jit(step)(state, batch, t_params)
    assert float(metrics[f"{term}_loss"]) > 0
    before = jax.tree_util.tree_flatten_with_path(state.params)[0]
    after = jax.tree_util.tree_leaves(new.params)
    moved = {jax.tree_util.keystr(p): bool(np.any(np.asarray(a) != np.asarray(b)))
             for (p, b), a in zip(before, after)}
    # the key bias adds q.b_k to every key of a row: softmax ignores it (gradient 0 up to
    # rounding), so it is left out of the "moves" checks
    moved = {k: v for k, v in moved.items() if "['key']['bias']" not in k}
    head = [k for k in moved if "pooler" in k or "classifier" in k]
    assert len(head) == 4 and not any(moved[k] for k in head)
    if term == "hidden":
        assert all(moved[k] for k in moved if k not in head)
    else:
        last = "['layer']['1']"
        untouched = [k for k in moved if last in k and (
            "'value'" in k or "'output'" in k or "'intermediate'" in k)]
        assert len(untouched) == 12 and not any(moved[k] for k in untouched)
        assert all(moved[k] for k in moved if "'query'" in k or "'key'" in k)
        assert all(moved[k] for k in moved if "['layer']['0']" in k or "embeddings" in k)
    if term == "hidden":  # the teacher's outputs go through the same stop_gradient
        return
    # d loss / d teacher: forward mode through the traced step (no compilation): the tangent of
    # the loss is the constant 0, for any direction ...
    def loss_tangent(step):
        direction = jax.tree_util.tree_map(jnp.ones_like, t_params)
        jaxpr = jax.make_jaxpr(lambda tp, d: jax.jvp(
            lambda t: step(state, batch, t)[1]["loss"], (tp,), (d,))[1])(t_params, direction)
        return jaxpr.jaxpr.outvars[0]

    out = loss_tangent(step)
    assert type(out).__name__ == "Literal" and float(out.val) == 0.0
    # ... and it is not without stop_gradient: the loss depends on the teacher
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jax.lax, "stop_gradient", lambda x: x)
        unstopped, _, _ = step_for(models, "teacher2", distill, freeze_embeddings=False)
        assert type(loss_tangent(unstopped)).__name__ != "Literal"


@pytest.mark.parametrize("arch", ["roberta", "distilbert"])
def test_sown_attention_scores_are_transformers_attentions(tmp_path, arch):
    """Every architecture sows its attention: softmax(scores) equals transformers' attention
    probabilities (real queries), and the outputs are those of the plain call."""
    from test_architectures import make_checkpoint

    tmodel = make_checkpoint(arch, "classification", tmp_path, num_labels=3)
    tmodel.config._attn_implementation = "eager"
    p = load_pretrained(tmp_path, head="classification", num_labels=3)
    ids = np.array([[5, 7, 9, 11, 13, 2], [5, 8, 10, 2, 1, 1]], np.int32)
    mask = (np.arange(6)[None] < np.array([[6], [4]])).astype(np.int32)
    plain = p.module.apply({"params": p.params}, ids, mask)
    out, sown = p.module.apply({"params": p.params}, ids, mask, mutable=["intermediates"])
    np.testing.assert_array_equal(out, plain)
    scores = attention_scores_of(sown["intermediates"])
    with torch.no_grad():
        ref = tmodel(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                     output_attentions=True).attentions
    assert len(scores) == len(ref) == 2
    for s, r in zip(scores, ref):
        real = mask[:, None, :, None] > 0
        np.testing.assert_allclose(np.where(real, jax.nn.softmax(s, -1), 0),
                                   np.where(real, r.numpy(), 0), atol=2e-6)


# ----------------------------------------------------------------------------------------------
# Bad input: one line naming the key
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides,match", [
    (["distill.alpha_hidden=-1"], r"^distill\.alpha_hidden must be >= 0, got -1\.0$"),
    (["distill.alpha_attention=-0.5"], r"^distill\.alpha_attention must be >= 0, got -0\.5$"),
    (["distill.layer_map=dynamc"],
     r"^unknown distill\.layer_map 'dynamc'; did you mean 'dynamic'\? \(choices: identity, "
     r"uniform, dynamic\)$"),
    (["distill.layer_map=cofi"], r"^unknown distill\.layer_map 'cofi' \(choices: "),
    (["distill.alpha_hidden=lots"], r"^distill\.alpha_hidden must be a number, got str 'lots'$"),
])
def test_bad_config_is_one_line_naming_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config(None, overrides)
    assert "\n" not in str(e.value)


def spec(**kw):
    return build_module(tiny_config(**kw), "classification", 2).spec


@pytest.mark.parametrize("teacher,distill,match", [
    (dict(hidden_size=64), dict(alpha_hidden=1.0),
     r"the teacher's are 64 wide, the student's 32 \(no learned projection\)"),
    (dict(hidden_size=64), dict(alpha_attention=1.0, layer_map="dynamic"), r"64 wide"),
    (dict(num_hidden_layers=4), dict(alpha_hidden=1.0),
     r"distill\.layer_map identity needs a teacher as deep as the student \(teacher 4 layers, "
     r"student 2\); use uniform or dynamic"),
    (dict(num_hidden_layers=1), dict(alpha_hidden=1.0, layer_map="uniform"),
     r"distill\.layer_map uniform needs a teacher at least as deep as the student"),
    (dict(num_attention_heads=2), dict(alpha_attention=1.0),
     r"distill\.alpha_attention needs the same attention heads in matched layers: student "
     r"layer 1 has 4, teacher layer 1 2"),
])
def test_unfit_teacher_is_one_line(teacher, distill, match):
    student = spec()
    with pytest.raises(UserError, match=match) as e:
        check_layer_distillation(student, spec(**teacher), DistillConfig(**distill))
    assert "\n" not in str(e.value)
    # nothing to check without layer-wise terms, and the step refuses it as the run does
    check_layer_distillation(student, spec(**teacher), DistillConfig())
    with pytest.raises(UserError, match=match):
        make_train_step(build_module(tiny_config(), "classification", 2), "classification",
                        Pruner.from_config(PruneConfig(method="none"), total_steps=2),
                        make_optimizer(learning_rate=1e-3, total_steps=2), teacher=build_module(tiny_config(**teacher),
                                                            "classification", 2),
                        distill=DistillConfig(**distill))
    # a deeper teacher is fine under uniform and dynamic, a shallower one under dynamic
    check_layer_distillation(student, spec(num_hidden_layers=4),
                             DistillConfig(alpha_hidden=1.0, alpha_attention=1.0,
                                           layer_map="uniform"))
    check_layer_distillation(student, spec(num_hidden_layers=1),
                             DistillConfig(alpha_hidden=1.0, layer_map="dynamic"))


def test_run_refuses_an_unfit_teacher_before_writing(tmp_path, shared_data):
    """load_setup (before the output directory is touched): a 32-wide teacher for the 384-wide
    MiniLM with alpha_hidden > 0 is a RunError naming the teacher."""
    from transformers import BertConfig, BertForSequenceClassification

    from mvp_jax.training.rundir import RunError
    from mvp_jax.training.runner import load_setup

    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=6, num_attention_heads=2,
                     intermediate_size=37, num_labels=2)
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "teacher")
    with pytest.raises(RunError, match=r"^teacher '.*teacher': layer-wise distillation compares "
                                       r"hidden states: the teacher's are 32 wide, the "
                                       r"student's 384") as e:
        load_setup(load_config(None, [
            f"task.data_dir={shared_data / 'glue' / 'SST-2'}", "data.max_train_samples=8",
            "data.max_eval_samples=8", f"distill.teacher={tmp_path / 'teacher'}",
            "distill.alpha_hidden=1"]))
    assert "\n" not in str(e.value)
