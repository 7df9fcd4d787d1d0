"""Distillation loss: T^2 KL(softmax(t/T) || softmax(s/T)), checked against torch's kl_div."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import BertConfig

from mvp_jax.distill import distillation_loss, kl_with_temperature
from mvp_jax.models import build_module, init_params


def test_matches_torch_kl_div_reference():
    """The reference computes ``kl_div(log_softmax(s/T), softmax(t/T), 'batchmean') * T^2``."""
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=(6, 3)).astype(np.float32)
    T = 2.0
    ref = torch.nn.functional.kl_div(torch.log_softmax(torch.tensor(s) / T, -1),
                                     torch.softmax(torch.tensor(t) / T, -1), reduction="batchmean") * T**2
    got = kl_with_temperature(jnp.asarray(s), jnp.asarray(t), T).mean()
    assert float(got) == pytest.approx(float(ref), rel=1e-5)


@pytest.mark.parametrize("kind", ["classification", "regression", "qa"])
def test_teacher_equal_to_student_gives_zero_loss_and_zero_gradient(kind):
    """alpha_ce = 0 and the teacher is the student: L = T^2 KL(p || p) = 0 and dL/dtheta = 0."""
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16)
    head = "qa" if kind == "qa" else "classification"
    module = build_module(cfg, head, 1 if kind == "regression" else 3)
    params = init_params(module, seed=0)
    ids = jax.random.randint(jax.random.PRNGKey(1), (4, 8), 0, 50)
    mask = jnp.ones_like(ids).at[:, 6:].set(0)
    types = jnp.zeros_like(ids)
    teacher_out = module.apply({"params": params}, ids, mask, types)

    def loss(p):
        student_out = module.apply({"params": p}, ids, mask, types)
        return distillation_loss(kind, student_out, teacher_out, 2.0).mean()

    value, grads = jax.value_and_grad(loss)(params)
    assert abs(float(value)) < 1e-6
    assert max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(grads)) < 1e-6
    # and it is not zero for a different teacher
    other = jax.tree_util.tree_map(lambda x: x + jax.random.normal(jax.random.PRNGKey(2), x.shape), teacher_out)
    assert float(distillation_loss(kind, teacher_out, other, 2.0).mean()) > 1e-2


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown task kind"):
        distillation_loss("ranking", jnp.zeros(2), jnp.zeros(2), 1.0)
