"""A PyTorch reference of the paper's fine-pruning loop: the oracle of test_reference_loop.py.

Written from the paper (Sanh, Wolf & Rush 2020, Sections 3-4) and the semantics of its code
("emmental", transformers/examples/research_projects/movement-pruning), independently of
mvp_jax (nothing here imports it). transformers' ``BertForSequenceClassification`` with every
encoder Q/K/V, attention-output, FFN-in and FFN-out ``nn.Linear`` replaced by
:class:`MaskedLinear` (``y = x (W * M)^T + b``), trained with:

* masks (``M``), per prunable matrix or over all of them together:
    - ``topk``: ``Top_v(S)``: the ``int(v * n)`` largest scores; straight-through
      (``dL/dS = dL/dM = dL/d(W*M) * W``);
    - ``magnitude``: ``Top_v(|W|)``, no gradient through the mask;
    - ``sigmoied_threshold``: ``sigmoid(S) > tau``; if that keeps fewer than
      ``n_min = int(0.005 n) + 1`` entries, ``S > kthvalue(S, n - n_min)`` (the 0.5% floor);
      straight-through;
    - ``l0``: hard concrete, ``min(1, max(0, sigmoid((log u - log(1-u) + S) / beta) (r - l) + l))``
      with ``l=-0.1, r=1.1, beta=2/3`` and the uniform noise ``u`` given by the caller;
      deterministic ``sigmoid(S)`` in place of the noisy one at evaluation;
  ties at the k-th value of Top-v are kept in (matrix order, position) order, positions taken
  row-major in the ``(in, out)`` layout (``W.T``) and matrices in the order of ``order``;
* the cubic threshold schedule with initial/final warm-ups, ``lambda = final_lambda * t /
  final_threshold``; penalties ``R = mean_matrices mean_ij sigmoid(S)`` (l1, soft movement) and
  ``mean_matrices mean_ij sigmoid(S - beta log(-l/r))`` (expected L0);
* embeddings frozen (``requires_grad=False``: no gradient, not clipped), ``clip_grad_norm_`` over
  every trainable parameter (scores included), the AdamW of transformers 2020 (bias
  corrections in float64; decay on the updated weight, none on biases, LayerNorm and scores),
  both learning rates with the same linear warm-up then linear decay; dropout off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

L0_LEFT, L0_RIGHT, L0_BETA = -0.1, 1.1, 2.0 / 3.0
PRUNABLE = ("attention.self.query", "attention.self.key", "attention.self.value",
            "attention.output.dense", "intermediate.dense", "output.dense")
NO_DECAY = ("bias", "LayerNorm.weight")


# ----------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------


class StraightThrough(torch.autograd.Function):
    """``mask`` forward; the mask's gradient goes to ``scores`` unchanged."""

    @staticmethod
    def forward(ctx, scores, mask):
        return mask.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def topk_binary(values: list[torch.Tensor], keep: float) -> list[torch.Tensor]:
    """Masks with ones on the ``int(keep * n)`` largest of all ``values`` together (``[out, in]``
    tensors); ties kept in (tensor, row-major position of ``value.T``) order."""
    flat = torch.cat([v.detach().t().reshape(-1) for v in values])
    k = int(keep * flat.numel())
    order = torch.sort(flat, descending=True, stable=True).indices
    mask = torch.zeros_like(flat)
    mask[order[:k]] = 1.0
    out, start = [], 0
    for v in values:
        n = v.numel()
        out.append(mask[start:start + n].reshape(v.shape[1], v.shape[0]).t().contiguous())
        start += n
    return out


def threshold_binary(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """``sigmoid(S) > tau``, never fewer than ``int(0.005 n) + 1`` entries (the reference)."""
    s = scores.detach()
    n = s.numel()
    n_min = int(0.005 * n) + 1
    mask = (torch.sigmoid(s) > tau).to(s.dtype)
    if mask.sum() < n_min:
        kth = s.flatten().kthvalue(max(n - n_min, 1)).values
        mask = (s > kth).to(s.dtype)
    return mask


def hard_concrete(scores: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    if u is None:
        s = torch.sigmoid(scores)
    else:
        s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + scores) / L0_BETA)
    return torch.clamp(s * (L0_RIGHT - L0_LEFT) + L0_LEFT, 0.0, 1.0)


class MaskedLinear(nn.Module):
    """``nn.Linear`` whose weight is multiplied by ``self.mask`` (set before each forward)."""

    def __init__(self, linear: nn.Linear, learn_scores: bool, score_init: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone())
        self.mask_scores = None
        if learn_scores:
            self.mask_scores = nn.Parameter(score_init.detach().clone().to(torch.float32))
        self.mask = None

    def forward(self, x):
        weight = self.weight if self.mask is None else self.weight * self.mask
        return nn.functional.linear(x, weight, self.bias)


# ----------------------------------------------------------------------------------------------
# Schedules, penalties, optimizer
# ----------------------------------------------------------------------------------------------


def schedule_threshold(step, total_steps, warmup_steps, initial_threshold, final_threshold,
                       initial_warmup, final_warmup, final_lambda):
    """The reference's cubic schedule: ``(threshold, lambda)`` at ``step`` (float64)."""
    if step <= initial_warmup * warmup_steps:
        threshold = initial_threshold
    elif step > total_steps - final_warmup * warmup_steps:
        threshold = final_threshold
    else:
        start = initial_warmup * warmup_steps
        span = total_steps - (initial_warmup + final_warmup) * warmup_steps
        threshold = final_threshold + (initial_threshold - final_threshold) * (
            1 - (step - start) / span) ** 3
    return threshold, final_lambda * threshold / final_threshold


def linear_lr_factor(step, warmup_steps, total_steps):
    """transformers' ``get_linear_schedule_with_warmup`` multiplier at ``step``."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


class ReferenceAdamW(torch.optim.Optimizer):
    """transformers.AdamW (2020, ``correct_bias=True``)."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                m.mul_(b1).add_(p.grad, alpha=1.0 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1.0 - b2)
                denom = v.sqrt().add_(group["eps"])
                t = state["step"]
                step_size = group["lr"] * math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)  # float64
                p.addcdiv_(m, denom, value=-step_size)
                if group["weight_decay"] > 0.0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


@dataclass
class Recipe:
    method: str  # topk | sigmoied_threshold | l0 | magnitude
    global_topk: bool = False
    initial_threshold: float = 1.0
    final_threshold: float = 0.3
    initial_warmup: float = 1
    final_warmup: float = 2
    regularization: str | None = None  # l1 | l0
    final_lambda: float = 0.0
    learning_rate: float = 1e-3
    scores_learning_rate: float = 1e-2
    warmup_steps: int = 2
    total_steps: int = 20
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    adam_epsilon: float = 1e-8


@dataclass
class Reference:
    """The pruned torch model and its training state."""

    model: nn.Module
    layers: dict[str, MaskedLinear]  # HF module name -> masked layer, in ``order``
    recipe: Recipe
    optimizer: ReferenceAdamW
    step: int = 0
    log: list[dict] = field(default_factory=list)

    @property
    def learned(self) -> bool:
        return self.recipe.method in ("topk", "sigmoied_threshold", "l0")

    def masks(self, threshold, noise=None, train=True) -> dict[str, torch.Tensor]:
        r, layers = self.recipe, self.layers
        if r.method in ("topk", "magnitude"):
            values = [(m.mask_scores if r.method == "topk" else m.weight.detach().abs())
                      for m in layers.values()]
            groups = [values] if r.global_topk else [[v] for v in values]
            binary = [b for g in groups for b in topk_binary(g, threshold)]
            if r.method == "magnitude":
                return dict(zip(layers, binary))
            return {n: StraightThrough.apply(v, b) for n, v, b in zip(layers, values, binary)}
        if r.method == "sigmoied_threshold":
            return {n: StraightThrough.apply(m.mask_scores,
                                             threshold_binary(m.mask_scores, threshold))
                    for n, m in layers.items()}
        return {n: hard_concrete(m.mask_scores, noise[n] if train else None)
                for n, m in layers.items()}

    def penalty(self) -> torch.Tensor:
        scores = [m.mask_scores for m in self.layers.values()]
        if self.recipe.regularization == "l1":
            terms = [torch.sigmoid(s).sum() / s.numel() for s in scores]
        else:
            shift = L0_BETA * math.log(-L0_LEFT / L0_RIGHT)
            terms = [torch.sigmoid(s - shift).sum() / s.numel() for s in scores]
        return sum(terms) / len(terms)

    def train_step(self, batch: dict[str, torch.Tensor], noise=None) -> dict:
        """One update on ``batch`` (input_ids, attention_mask, token_type_ids, labels);
        ``noise``: ``{name: u}`` per masked layer (``[out, in]``) for l0. Returns the loss,
        the gradient norm before clipping, the schedules' values and the masks used."""
        r = self.recipe
        threshold, lam = schedule_threshold(
            self.step, r.total_steps, r.warmup_steps, r.initial_threshold, r.final_threshold,
            r.initial_warmup, r.final_warmup, r.final_lambda)
        factor = linear_lr_factor(self.step, r.warmup_steps, r.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        masks = self.masks(threshold, noise, train=True)
        for name, mask in masks.items():
            self.layers[name].mask = mask
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            token_type_ids=batch["token_type_ids"]).logits
        task = nn.functional.cross_entropy(logits, batch["labels"])
        loss = task
        if r.regularization:
            loss = loss + lam * self.penalty()
        loss.backward()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(trainable, r.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for m in self.layers.values():
            m.mask = None
        kept = sum(float((m > 0).sum()) for m in masks.values())
        record = {"loss": float(loss.detach()), "task_loss": float(task.detach()),
                  "grad_norm": float(norm), "threshold": threshold, "lambda": lam,
                  "remaining_weights": kept / sum(m.numel() for m in masks.values()),
                  "masks": {n: m.detach().clone() for n, m in masks.items()}}
        self.log.append(record)
        self.step += 1
        return record

    @torch.no_grad()
    def final_masks(self) -> dict[str, torch.Tensor]:
        """Deterministic masks at the final threshold (``[out, in]``)."""
        masks = self.masks(self.recipe.final_threshold, train=False)
        return {n: m.detach().clone() for n, m in masks.items()}


def build(model: nn.Module, recipe: Recipe, scores: dict[str, torch.Tensor] | None = None,
          order: list[str] | None = None) -> Reference:
    """Prepare a ``BertForSequenceClassification`` for fine-pruning (in place).

    ``scores``: initial scores per HF module name (``[out, in]``) for the learned methods;
    ``order``: the masked layers' order (global Top-v tie-break), default the module order.
    The model is put in eval mode: dropout off (masks are computed for training regardless)."""
    learned = recipe.method in ("topk", "sigmoied_threshold", "l0")
    layers = {}
    for name, module in list(model.named_modules()):
        for suffix in PRUNABLE:
            if name.endswith(suffix) and ".encoder.layer." in name:
                parent_name, _, attr = name.rpartition(".")
                masked = MaskedLinear(module, learned, scores[name] if learned else None)
                setattr(model.get_submodule(parent_name), attr, masked)
                layers[name] = masked
    order = list(layers) if order is None else list(order)
    layers = {n: layers[n] for n in order}
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if "mask_scores" in n], "lr": recipe.scores_learning_rate,
         "weight_decay": 0.0},
        {"params": [p for n, p in named if "mask_scores" not in n
                    and not any(nd in n for nd in NO_DECAY)],
         "lr": recipe.learning_rate, "weight_decay": recipe.weight_decay},
        {"params": [p for n, p in named if "mask_scores" not in n
                    and any(nd in n for nd in NO_DECAY)],
         "lr": recipe.learning_rate, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["initial_lr"] = g["lr"]
    optimizer = ReferenceAdamW(groups, lr=recipe.learning_rate, eps=recipe.adam_epsilon)
    return Reference(model, layers, recipe, optimizer)
