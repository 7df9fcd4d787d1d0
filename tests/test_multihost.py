"""Multi-host: two `mvp-jax fine-prune` processes on this machine (jax.distributed on the CPU
backend, gloo collectives over localhost), then a one-process resume of their checkpoint.

Each process has 2 CPU devices; the mesh is 2 x 2 (data across the processes, model within
each), so every batch is fed half by each process and the model-parallel layers run inside a
process. The one-process resume runs on a 1 x 2 mesh: the checkpoint is resharded, and the final
evaluation and export run with model-sharded scores.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from mvp_jax.training import sharding

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_PRUNABLE = 2 * (4 * 32 * 32 + 2 * 32 * 64)  # conftest's tiny_bert: 2 layers, 32, FFN 64


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def overrides(shared_data, model):
    sets = [f"model.name={model}", f"task.data_dir={shared_data / 'glue' / 'SST-2'}", "task.max_seq_length=32",
            "data.max_train_samples=32", "data.max_eval_samples=16", "train.batch_size=8",
            "train.max_steps=4", "train.warmup_steps=1", "train.log_every=1",
            "prune.initial_warmup=1", "prune.final_warmup=1", "prune.final_threshold=0.3",
            "prune.global_topk=true", "model.dropout=0.0"]
    return [a for s in sets for a in ("--set", s)]


def env_for(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=REPO,
               # level 0: XLA's CPU backend compiles ~3x faster (these runs are about plumbing)
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                         "--xla_backend_optimization_level=0")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def cli(*args):
    return [sys.executable, "-m", "mvp_jax.cli", "fine-prune", "--no-progress", *args]


def first_step_loss(shared_data, model):
    """Loss of step 1 computed here on one device: masks are all ones at the initial threshold
    1.0 and dropout is off, so it is the plain forward loss of the first batch."""
    import jax.numpy as jnp

    from mvp_jax.config import load_config
    from mvp_jax.training.runner import _batch_iterator, load_setup
    from mvp_jax.training.train import model_inputs, per_example_task_loss

    sets = overrides(shared_data, model)
    cfg = load_config(None, [sets[i + 1] for i in range(0, len(sets), 2)])
    setup = load_setup(cfg)
    batch = {k: v[0] for k, v in next(_batch_iterator(setup, 0)).items()}

    @jax.jit
    def loss(params, batch):
        out = setup.module.apply({"params": params}, *model_inputs(batch), deterministic=True)
        w = batch["example_weight"]
        return jnp.sum(per_example_task_loss("classification", out, batch) * w) / jnp.sum(w)

    return float(loss(setup.params, batch))


def test_two_processes_write_a_checkpoint_that_one_process_resumes(tmp_path, shared_data,
                                                                  tiny_bert):
    run = tmp_path / "run"
    port = free_port()
    args = cli("--output-dir", str(run), *overrides(shared_data, tiny_bert), "--set", "mesh.model=2",
               "--stop-at-step", "2")
    procs = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True,
                              env=env_for(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                          JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=i))
             for i in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=420)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("two-process run timed out")
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i}:\n{out[-3000:]}"
        assert '"complete": false' in out and '"step": 2' in out, out[-2000:]

    # one checkpoint at step 2, written by both processes; files and logs by process 0 only
    ckpt = run / "checkpoints"
    assert sorted(os.listdir(ckpt)) == ["2"]
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(ckpt / "2" / "default"))
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    # each process fed its half of the batch: step 1's loss is the loss of the whole batch
    assert lines[0]["loss"] == pytest.approx(first_step_loss(shared_data, tiny_bert), rel=1e-4)

    # one process, two devices (mesh 1 x 2): resume from step 2 to the end
    res = subprocess.run(cli("--output-dir", str(run), *overrides(shared_data, tiny_bert), "--resume",
                             "--set", "mesh.model=2"),
                         cwd=REPO, capture_output=True, text=True, timeout=420, env=env_for(2))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    results = json.loads((run / "eval_results.json").read_text())
    assert results["step"] == 4
    assert results["remaining"] == int(0.3 * TINY_PRUNABLE)  # exact global Top-v at export
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3, 4]
    assert sorted(os.listdir(ckpt))[-1] == "4"


def test_checkpoint_without_a_newer_state_field_restores(tmp_path):
    """Checkpoints written before ``TrainState.topk_value`` existed still resume."""
    import flax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    from mvp_jax.training.checkpoint import CheckpointManager
    from mvp_jax.training.optim import make_optimizer
    from mvp_jax.training.train import init_state

    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    optimizer = make_optimizer(learning_rate=1e-3, total_steps=3)
    state = init_state(params, {}, optimizer, seed=0).replace(step=jnp.int32(7))
    old = flax.serialization.to_state_dict(state)
    old.pop("topk_value")
    mngr = ocp.CheckpointManager(str(tmp_path), options=ocp.CheckpointManagerOptions(create=True))
    mngr.save(7, args=ocp.args.StandardSave(old))
    mngr.wait_until_finished()
    mngr.close()

    template = init_state({"w": jnp.zeros((2, 3))}, {}, optimizer, seed=1)
    ckpt = CheckpointManager(str(tmp_path))
    restored = ckpt.restore(template.replace(topk_value=jnp.float32(0.25)))
    ckpt.close()
    assert int(restored.step) == 7 and float(restored.topk_value) == 0.25
    np.testing.assert_array_equal(restored.params["w"], np.arange(6.0).reshape(2, 3))


def test_initialize_distributed_only_when_asked(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                "MVP_JAX_DISTRIBUTED"):
        monkeypatch.delenv(var, raising=False)
    assert sharding.initialize_distributed() is False
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "1")
    assert sharding.initialize_distributed() is False  # one process: nothing to start
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
        sharding.initialize_distributed()
    assert jax.process_count() == 1
