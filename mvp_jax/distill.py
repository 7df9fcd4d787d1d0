"""Knowledge distillation from a teacher (Hinton et al. 2015), as the paper's reference.

Per example, with temperature ``T``, ``p = softmax(teacher / T)`` and ``q = softmax(student / T)``::

    L_distil = T^2 * KL(p || q) = T^2 * sum_c p_c (log p_c - log q_c)

and the training loss is ``alpha_ce * L_task + alpha_distil * L_distil``. For SQuAD the start and
end distributions are distilled separately and averaged; for regression (STS-B) the distillation
term is the squared difference of the two predictions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mvp_jax.errors import UserError


def kl_with_temperature(student_logits, teacher_logits, temperature: float) -> jax.Array:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))`` over the last axis."""
    t = jnp.asarray(temperature, jnp.float32)
    log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t, axis=-1)
    log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
    return t**2 * jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def distillation_loss(kind: str, student, teacher, temperature: float) -> jax.Array:
    """Per-example distillation loss for a task ``kind`` (classification | regression | qa)."""
    if kind == "classification":
        return kl_with_temperature(student, teacher, temperature)
    if kind == "regression":
        return (student.reshape(-1).astype(jnp.float32) - teacher.reshape(-1).astype(jnp.float32)) ** 2
    if kind == "qa":
        return 0.5 * (kl_with_temperature(student[0], teacher[0], temperature)
                      + kl_with_temperature(student[1], teacher[1], temperature))
    raise UserError(f"unknown task kind {kind!r}; choose one of classification, regression, qa")


def teacher_label_permutation(id2label: dict, label_names) -> list[int] | None:
    """``perm`` with ``teacher_output[perm[i]]`` = the task's label ``i``, when the teacher names
    the task's labels (case-insensitive) in another order, e.g. an MNLI teacher trained with
    (contradiction, neutral, entailment) against GLUE's (entailment, neutral, contradiction).
    ``None`` when the order already matches or cannot be checked (generic ``LABEL_i`` names,
    other names, or a task without label names)."""
    names = [str(id2label.get(i, id2label.get(str(i), ""))).lower() for i in range(len(id2label))]
    wanted = [str(n).lower() for n in label_names]
    if not wanted or sorted(names) != sorted(wanted) or names == wanted:
        return None
    return [names.index(n) for n in wanted]


def permute_classifier(params, perm, path: str = "classifier"):
    """The classifier's output units reordered: ``kernel[:, perm]``, ``bias[perm]`` of the dense
    at ``path`` (the layout's ``logits``)."""
    top, _, rest = path.partition("/")
    if rest:
        return {**params, top: permute_classifier(params[top], perm, rest)}
    head = dict(params[top])
    head["kernel"] = jnp.asarray(head["kernel"])[:, jnp.asarray(perm)]
    head["bias"] = jnp.asarray(head["bias"])[jnp.asarray(perm)]
    return {**params, top: head}
