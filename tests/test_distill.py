"""Distillation loss: T^2 KL(softmax(t/T) || softmax(s/T)), checked against torch's kl_div."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import BertConfig

from mvp_jax.models import build_module, init_params
from mvp_jax.training.distill import distillation_loss, kl_with_temperature


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


# --- the teacher's label order ------------------------------------------------------------------

GLUE_MNLI = ("entailment", "neutral", "contradiction")


@pytest.mark.parametrize("id2label,expected", [
    ({0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}, [2, 1, 0]),  # roberta-large-mnli's order
    ({0: "neutral", 1: "entailment", 2: "contradiction"}, [1, 0, 2]),
    ({0: "entailment", 1: "neutral", 2: "contradiction"}, None),        # already the task's order
    ({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, None),                 # generic: cannot check
    ({"0": "Contradiction", "1": "Neutral", "2": "Entailment"}, [2, 1, 0]),  # string keys (json)
])
def test_teacher_label_permutation(id2label, expected):
    from mvp_jax.training.distill import teacher_label_permutation

    perm = teacher_label_permutation(id2label, GLUE_MNLI)
    assert perm == expected
    if perm is not None:  # teacher output perm[i] is the task's label i
        names = [str(id2label.get(i, id2label.get(str(i)))).lower() for i in range(3)]
        assert [names[p] for p in perm] == list(GLUE_MNLI)


def test_teacher_in_another_label_order_is_reordered_on_load(tmp_path, shared_data, capsys):
    """A teacher saved (by transformers) with SST-2's labels reversed: after loading, its output i
    is the task's label i, i.e. the torch classifier's rows in reverse order."""
    from transformers import BertForSequenceClassification

    from mvp_jax.config import load_config
    from mvp_jax.training.runner import load_setup

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=37, num_labels=2, id2label={0: "POSITIVE", 1: "NEGATIVE"},
                     label2id={"POSITIVE": 0, "NEGATIVE": 1})
    model = BertForSequenceClassification(cfg)
    model.save_pretrained(tmp_path / "teacher")
    setup = load_setup(load_config(None, [
        f"task.data_dir={shared_data / 'glue' / 'SST-2'}", "data.max_train_samples=8",
        "data.max_eval_samples=8", f"distill.teacher={tmp_path / 'teacher'}"]))
    head = setup.teacher.params["classifier"]
    weight = model.classifier.weight.detach().numpy()  # [labels, hidden]
    np.testing.assert_array_equal(np.asarray(head["kernel"]), weight.T[:, ::-1])
    np.testing.assert_array_equal(np.asarray(head["bias"]), model.classifier.bias.detach().numpy()[::-1])
    assert "reordered to the task's ['negative', 'positive']" in capsys.readouterr().err
