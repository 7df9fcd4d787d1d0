"""Training: fine-pruning runs, on one device or sharded over a mesh.

Above pruning, data and models. ``train`` builds the pure train step (loss, masks, penalty,
distillation) and ``optim`` its optax chain with separate learning rates for weights and scores;
``sharding`` places it on a ``Mesh``; ``evaluation`` scores a model; ``runner`` drives a whole run
(``fine_prune``) with ``checkpoint`` (orbax) and ``rundir`` (the run directory: lock, resume,
restore, export); ``target`` searches the penalty for a remaining fraction; ``distill`` gives the
teacher losses.
"""

from mvp_jax.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "fine_prune": "runner", "fine_prune_to_target": "target",
    "make_train_step": "train", "init_state": "train", "TrainState": "train",
    "make_optimizer": "optim", "make_mesh": "sharding",
    "evaluate_model_dir": "evaluation", "make_eval_step": "evaluation",
    "locate": "rundir", "restore_run": "rundir", "export_run": "rundir",
    "distillation_loss": "distill",
})
