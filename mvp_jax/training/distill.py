"""Knowledge distillation from a teacher (Hinton et al. 2015), as the paper's reference.

Per example, with temperature ``T``, ``p = softmax(teacher / T)`` and ``q = softmax(student / T)``::

    L_distil = T^2 * KL(p || q) = T^2 * sum_c p_c (log p_c - log q_c)

and the training loss is ``alpha_ce * L_task + alpha_distil * L_distil``. For SQuAD the start and
end distributions are distilled separately and averaged; for regression (STS-B) the distillation
term is the squared difference of the two predictions.

Layer-wise distillation (TinyBERT, Jiao et al. 2020; CoFi, Xia et al. 2022), with ``m_bl`` the
attention mask of token ``l`` of example ``b`` (padding counts nowhere) and hidden states
``h^0`` (embedding output) ... ``h^M`` (layer outputs), ``[B, L, H]``::

    MSE_b(h_s, h_t) = sum_l m_bl ||h_s[b,l] - h_t[b,l]||^2 / (H * sum_l m_bl)
    KL_b(S, T)      = 1/(heads * sum_q m_bq) * sum_heads sum_{q: m_bq=1} sum_{k: m_bk=1}
                      p_t (log p_t - log p_s),    p = softmax_k(attention scores)

(MiniLM's KL of the teacher's attention distributions to the student's, per head and query).
A layer map pairs student hidden state ``s`` with teacher hidden state ``g(s)`` (``N`` teacher,
``M`` student layers); the embedding output is always paired with the embedding output:

    identity: g(s) = s (N == M);   uniform: g(s) = floor(s N / M) (TinyBERT)
    dynamic:  teacher layer i = 1..N gets student layer m(i) = argmin_{j >= m(i-1), j >= 1}
              sum_b w_b MSE_b(h_s^j, h_t^i), under stop_gradient (CoFi, Section 3.3)

    L_hidden    = mean over the pairs (s, t), embedding included, of MSE_b(h_s^s, h_t^t)
    L_attention = mean over the layer pairs (s >= 1) of KL_b(scores_s, scores_t)

both per example, weighted as the task loss; the training loss adds
``alpha_hidden * L_hidden + alpha_attention * L_attention``.
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


# ----------------------------------------------------------------------------------------------
# Layer-wise distillation
# ----------------------------------------------------------------------------------------------

LAYER_MAPS = ("identity", "uniform", "dynamic")


def hidden_mse(student, teacher, token_mask) -> jax.Array:
    """Per example ``sum_l m_l ||s_l - t_l||^2 / (H * sum_l m_l)`` of ``[B, L, H]`` hidden states
    (the mean squared error over real tokens and features); ``[B]``."""
    m = token_mask.astype(jnp.float32)
    sq = jnp.sum((student.astype(jnp.float32) - teacher.astype(jnp.float32)) ** 2, axis=-1)
    return jnp.sum(sq * m, axis=-1) / (student.shape[-1] * jnp.maximum(jnp.sum(m, axis=-1), 1.0))


def attention_kl(student_scores, teacher_scores, token_mask) -> jax.Array:
    """Per example ``1/(heads * n) sum_h sum_{real q} sum_{real k} p (log p - log q)`` with
    ``p = softmax_k(teacher_scores)``, ``q = softmax_k(student_scores)`` (scores ``[B, heads, L,
    L]``, masked keys at ``finfo.min``) and ``n`` real queries: ``KL(p || q)`` averaged over
    heads and real query positions; ``[B]``."""
    keep = token_mask > 0
    log_p = jax.nn.log_softmax(teacher_scores.astype(jnp.float32), axis=-1)
    log_q = jax.nn.log_softmax(student_scores.astype(jnp.float32), axis=-1)
    terms = jnp.where(keep[:, None, None, :], jnp.exp(log_p) * (log_p - log_q), 0.0)
    rows = jnp.sum(terms, axis=-1) * keep[:, None, :]  # [B, heads, L]: real queries only
    n = jnp.maximum(jnp.sum(keep, axis=-1), 1) * max(student_scores.shape[1], 1)
    return jnp.sum(rows, axis=(1, 2)) / n


def uniform_map(student_layers: int, teacher_layers: int) -> tuple[int, ...]:
    """``g(s) = floor(s N / M)`` for the student's hidden states ``s = 0..M`` (0: embedding
    output): the teacher's hidden state each one learns from (TinyBERT; identity when N = M)."""
    return tuple(s * teacher_layers // student_layers for s in range(student_layers + 1))


def dynamic_map(cost) -> jax.Array:
    """CoFi's layer map from ``cost[i, j]`` (``[N, M]``: teacher layer ``i + 1`` against student
    layer ``j + 1``): ``m(1) = argmin_j cost[0, j]``, ``m(i) = argmin_{j >= m(i-1)} cost[i-1, j]``
    (ties: the shallowest), i.e. matches non-decreasing in depth. Returns the student layer
    numbers ``m(i)`` in ``1..M``, int32 ``[N]``; no gradient."""
    cost = jax.lax.stop_gradient(cost)
    columns = jnp.arange(cost.shape[1])
    prev, out = jnp.int32(0), []
    for row in cost:
        prev = jnp.argmin(jnp.where(columns >= prev, row, jnp.inf)).astype(jnp.int32)
        out.append(prev)
    return jnp.stack(out) + 1


def layer_distillation(layer_map: str, student_hidden, teacher_hidden, token_mask, weight,
                       student_scores=None, teacher_scores=None):
    """Per-example ``(L_hidden [B], L_attention [B] or None)`` (module docstring) of the hidden
    states ``h^0..h^M`` / ``h^0..h^N`` and, when given, the attention scores of layers ``1..M``
    / ``1..N``. ``weight``: the examples' weights, for the dynamic map's batch cost only."""
    M, N = len(student_hidden) - 1, len(teacher_hidden) - 1
    embed = hidden_mse(student_hidden[0], teacher_hidden[0], token_mask)
    if layer_map == "dynamic":
        per_pair = jnp.stack([jnp.stack([hidden_mse(s, t, token_mask) for s in student_hidden[1:]])
                              for t in teacher_hidden[1:]])  # [N, M, B]
        match = dynamic_map(jnp.sum(per_pair * weight, axis=-1))
        hidden = (embed + jnp.sum(per_pair[jnp.arange(N), match - 1], axis=0)) / (N + 1)
        if student_scores is None:
            return hidden, None
        stacked = jnp.stack(student_scores)
        kl = [attention_kl(stacked[match[i] - 1], teacher_scores[i], token_mask) for i in range(N)]
        return hidden, sum(kl) / N
    if layer_map not in ("identity", "uniform"):
        raise UserError(f"unknown distill.layer_map {layer_map!r}; choose one of "
                        f"{', '.join(LAYER_MAPS)}")
    g = uniform_map(M, N)
    hidden = (embed + sum(hidden_mse(student_hidden[s], teacher_hidden[g[s]], token_mask)
                          for s in range(1, M + 1))) / (M + 1)
    if student_scores is None:
        return hidden, None
    kl = [attention_kl(student_scores[s - 1], teacher_scores[g[s] - 1], token_mask)
          for s in range(1, M + 1)]
    return hidden, sum(kl) / M


def check_layer_distillation(student_spec, teacher_spec, distill) -> None:
    """``UserError`` (one line) when the teacher cannot teach the student layer by layer under
    ``distill`` (its ``alpha_hidden``, ``alpha_attention``, ``layer_map``): hidden states of
    another width (no learned projection), another depth under the identity map, or matched
    layers with other head counts. Nothing to check when both weights are 0."""
    a_hidden = getattr(distill, "alpha_hidden", 0.0)
    a_attention = getattr(distill, "alpha_attention", 0.0)
    layer_map = getattr(distill, "layer_map", "identity")
    if not (a_hidden > 0 or a_attention > 0):
        return
    s, t = student_spec, teacher_spec
    M, N = s.num_hidden_layers, t.num_hidden_layers
    if (a_hidden > 0 or layer_map == "dynamic") and s.hidden_size != t.hidden_size:
        raise UserError(f"layer-wise distillation compares hidden states: the teacher's are "
                        f"{t.hidden_size} wide, the student's {s.hidden_size} (no learned "
                        f"projection); use a teacher of the student's width or distill.alpha_hidden"
                        f"=0 distill.alpha_attention=0")
    if layer_map == "identity" and M != N:
        raise UserError(f"distill.layer_map identity needs a teacher as deep as the student "
                        f"(teacher {N} layers, student {M}); use uniform or dynamic")
    if layer_map == "uniform" and M > N:
        raise UserError(f"distill.layer_map uniform needs a teacher at least as deep as the "
                        f"student (teacher {N} layers, student {M}); use dynamic")
    if a_attention > 0:
        pairs = ([(j, i) for i in range(1, N + 1) for j in range(1, M + 1)]
                 if layer_map == "dynamic" else
                 [(j, g) for j, g in enumerate(uniform_map(M, N)) if j >= 1])
        for j, i in pairs:
            if s.heads(j - 1) != t.heads(i - 1):
                raise UserError(f"distill.alpha_attention needs the same attention heads in "
                                f"matched layers: student layer {j} has {s.heads(j - 1)}, "
                                f"teacher layer {i} {t.heads(i - 1)}")
