"""Config system: recipes load, overrides parse, every bad input is one clear ConfigError."""

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mvp_jax import config as C
from mvp_jax import task_names
from mvp_jax.config import (
    Config,
    ConfigError,
    PruneConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    save_config,
)
from mvp_jax.pruning import methods

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
ALL_YAML = sorted(CONFIGS.rglob("*.yaml"))
RECIPES = [p for p in ALL_YAML if not p.name.startswith("_") and "methods" not in p.parts]


def rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------------
# Recipes
# ----------------------------------------------------------------------------------------------


def test_there_are_recipes():
    names = {rel(p) for p in RECIPES}
    for task in ("squad", "mnli", "qqp"):
        for method in ("dense", "magnitude", "movement", "soft_movement", "l0"):
            assert f"configs/paper/{task}/{method}.yaml" in names
    for method in ("dense", "magnitude", "movement", "soft_movement", "l0"):
        assert f"configs/lab/sst2/{method}.yaml" in names


@pytest.mark.parametrize("path", ALL_YAML, ids=rel)
def test_every_yaml_loads_validates_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def _readme_commands():
    text = (CONFIGS / "README.md").read_text()
    found = re.findall(r"mvp-jax fine-prune --config configs/[^`\n]+", text)
    assert found
    return found


def _run_command(command):
    """Parse a README command line with the CLI's own parser and load its config."""
    from mvp_jax.cli import build_parser

    args = build_parser().parse_args(shlex.split(command)[1:])
    assert args.command == "fine-prune" and len(args.config) == 1 and args.output_dir, command
    path = ROOT / args.config[0]
    return path, load_config(path, args.overrides)


def test_readme_lists_every_recipe_with_a_runnable_command():
    commands = _readme_commands()
    covered = set()
    for command in commands:
        path, cfg = _run_command(command)
        covered.add(path)
        if "lab" in path.parts:
            folder = {"sst2": "SST-2", "cola": "CoLA"}[cfg.task.name]
            assert cfg.task.data_dir == f"../shared/data/glue/{folder}"
            assert (ROOT / cfg.task.data_dir / "dev.tsv").resolve().exists() or \
                not (ROOT.parent / "shared").exists()
    assert set(RECIPES) <= covered, sorted(rel(p) for p in set(RECIPES) - covered)


def test_readme_distillation_examples_set_a_teacher():
    cfgs = [_run_command(c)[1] for c in _readme_commands() if "distill.teacher" in c]
    assert cfgs and all(c.distill.teacher for c in cfgs)
    assert {c.task.name for c in cfgs} >= {"squad", "mnli", "qqp"}


def test_paper_recipes_match_the_reference_readme():
    mv = load_config(CONFIGS / "paper/squad/movement.yaml")
    assert mv.model.name == "bert-base-uncased" and mv.task.name == "squad"
    assert (mv.task.max_seq_length, mv.task.doc_stride) == (384, 128)
    t = mv.train
    assert (t.batch_size, t.epochs, t.warmup_steps) == (16, 10.0, 5400)
    assert (t.learning_rate, t.scores_learning_rate, t.freeze_embeddings) == (3e-5, 1e-2, True)
    p = mv.prune
    assert (p.method, p.initial_threshold, p.final_threshold) == ("topk", 1.0, 0.15)
    assert (p.initial_warmup, p.final_warmup, p.mask_init, p.mask_scale) == (1, 2, "constant", 0)
    assert mv.distill == C.DistillConfig(teacher=None, alpha_ce=0.1, alpha_distil=0.9,
                                         temperature=2.0)

    soft = load_config(CONFIGS / "paper/squad/soft_movement.yaml").prune
    assert (soft.method, soft.initial_threshold, soft.final_threshold) == ("sigmoied_threshold", 0, 0.1)
    assert (soft.regularization, soft.final_lambda) == ("l1", 400.0)

    l0 = load_config(CONFIGS / "paper/squad/l0.yaml")
    assert (l0.prune.method, l0.prune.regularization, l0.prune.final_lambda) == ("l0", "l0", 125.0)
    assert (l0.prune.mask_init, l0.prune.mask_scale, l0.prune.final_warmup) == ("constant", 2.197, 1)
    assert (l0.prune.initial_threshold, l0.prune.final_threshold) == (1.0, 1.0)
    assert l0.train.scores_learning_rate == 0.1

    mag = load_config(CONFIGS / "paper/squad/magnitude.yaml").prune
    assert (mag.method, mag.initial_threshold, mag.final_threshold) == ("magnitude", 1.0, 0.15)
    assert load_config(CONFIGS / "paper/mnli/dense.yaml").prune.method == "none"
    for task, batch in (("mnli", 32), ("qqp", 32)):
        cfg = load_config(CONFIGS / f"paper/{task}/movement.yaml")
        assert (cfg.task.name, cfg.task.max_seq_length, cfg.train.batch_size) == (task, 128, batch)


def test_lab_recipes_are_small():
    for path in CONFIGS.glob("lab/sst2/*.yaml"):
        cfg = load_config(path)
        assert cfg.model.name == "minilm-l6" and cfg.task.name == "sst2"
        # minutes on 2 CPU cores: a bounded step count, batches cut to length buckets
        assert cfg.train.max_steps is not None and cfg.train.max_steps <= 1500
        assert cfg.data.bucket_lengths and cfg.data.bucket_lengths[-1] == cfg.task.max_seq_length
        assert cfg.task.data_dir is None  # hub by default; README shows the local override


def test_every_choice_a_config_accepts_is_implemented():
    """One source for each list of names (``mvp_jax.choices``, ``mvp_jax.pruning.methods``): every name a
    config accepts works in the modules that implement it."""
    import jax

    from mvp_jax.pruning import regularizers
    from mvp_jax.pruning.structured import init_scores
    from mvp_jax.training import train
    from mvp_jax.training.optim import make_optimizer

    params = {"bert": {"encoder": {"layer": {"0": {"attention": {"self": {"query": {
        "kernel": jax.numpy.ones((4, 4))}}}}}}}}
    for init in C.MASK_INITS:
        assert init_scores(params, init, 0.1, rng=jax.random.PRNGKey(0))
    for name in C.REGULARIZATIONS:
        assert callable(regularizers.regularizer(name))
    for impl in C.RNG_IMPLS:
        assert train.raw_key(0, impl).dtype == jax.numpy.uint32
    for name in C.OPTIMIZERS:
        assert make_optimizer(learning_rate=1e-3, total_steps=10, optimizer=name)
    for dtype in C.DTYPES:
        assert load_config(None, [f"model.dtype={dtype}"]).model.dtype == dtype


# ----------------------------------------------------------------------------------------------
# Overrides
# ----------------------------------------------------------------------------------------------


def test_optimizer_is_the_reference_adamw_by_default():
    assert TrainConfig().optimizer == "reference_adamw"
    for path in CONFIGS.glob("paper/*/*.yaml"):  # the paper recipes train as the reference
        if not path.name.startswith("_"):
            assert load_config(path).train.optimizer == "reference_adamw", rel(path)
    assert load_config(None, ["train.optimizer=adamw"]).train.optimizer == "adamw"
    with pytest.raises(ConfigError, match=r"^unknown train\.optimizer 'adam'; did you mean "
                                          r"'adamw'\? \(choices: reference_adamw, adamw\)$"):
        load_config(None, ["train.optimizer=adam"])



def test_overrides_parse_types():
    cfg = load_config(None, [
        "train.batch_size=8", "train.learning_rate=3e-5", "train.epochs=2",
        "train.freeze_embeddings=false", "train.max_steps=null", "prune.patterns=[a, 'b/c$']",
        "task.data_dir=../shared/data/glue/SST-2", "model.name=123", "distill.teacher=",
        "prune.final_threshold=.1", "train.adam_epsilon=1E-6",
    ])
    t = cfg.train
    assert t.batch_size == 8 and type(t.batch_size) is int
    assert t.learning_rate == 3e-5 and type(t.learning_rate) is float
    assert t.epochs == 2.0 and type(t.epochs) is float
    assert t.freeze_embeddings is False and t.max_steps is None and t.adam_epsilon == 1e-6
    assert cfg.prune.patterns == ("a", "b/c$") and cfg.prune.final_threshold == 0.1
    assert cfg.task.data_dir == "../shared/data/glue/SST-2"
    assert cfg.model.name == "123"
    assert cfg.distill.teacher is None


def test_overrides_apply_after_files_and_in_order(tmp_path):
    f = write(tmp_path / "a.yaml", "train:\n  batch_size: 4\n  seed: 1\n")
    cfg = load_config(f, ["train.batch_size=5", "train.batch_size=6"])
    assert (cfg.train.batch_size, cfg.train.seed) == (6, 1)
    assert apply_overrides(cfg, ["train.seed=7"]).train == cfg.train.replace(seed=7)


def test_yaml_file_reads_exponent_floats(tmp_path):
    f = write(tmp_path / "a.yaml", "train:\n  learning_rate: 3e-5\n  scores_learning_rate: 1E-2\n")
    t = load_config(f).train
    assert (t.learning_rate, t.scores_learning_rate) == (3e-5, 1e-2)


def test_task_name_is_canonical():
    assert load_config(None, ["task.name=SST-2"]).task.name == "sst2"


# ----------------------------------------------------------------------------------------------
# Errors: each a ConfigError with one line naming the problem
# ----------------------------------------------------------------------------------------------

BAD_OVERRIDES = [
    # unknown names, with the closest valid one
    (["prune.final_treshold=0.1"],
     r"unknown config key 'prune\.final_treshold'; did you mean 'prune\.final_threshold'\?"),
    (["train.final_threshold=0.1"], r"did you mean 'prune\.final_threshold'\?"),
    (["trian.batch_size=8"], r"unknown config section 'trian'; did you mean 'train'\?"),
    (["train.zzzzzz=1"], r"unknown config key 'train\.zzzzzz' \(keys of 'train': batch_size"),
    # wrong types
    (["train.batch_size=abc"], r"train\.batch_size must be an integer, got str 'abc'"),
    (["train.batch_size=16.5"], r"train\.batch_size must be an integer, got float"),
    (["train.batch_size=true"], r"train\.batch_size must be an integer, got bool"),
    (["train.learning_rate=fast"], r"train\.learning_rate must be a number, got str"),
    (["train.learning_rate=.inf"], r"train\.learning_rate must be finite"),
    (["train.freeze_embeddings=1"], r"train\.freeze_embeddings must be true or false"),
    (["prune.patterns=abc"], r"prune\.patterns must be a list of strings"),
    (["prune.patterns=[1]"], r"prune\.patterns must be a list of strings, got item int"),
    (["prune.patterns=['(']"], r"prune\.patterns: invalid regex"),
    (["prune.patterns=[]"], r"prune\.patterns must not be empty"),
    # choices, with the closest valid one
    (["prune.method=topK"], r"unknown prune\.method 'topK'; did you mean 'topk'\?"),
    (["prune.method=movement"], r"unknown prune\.method 'movement'.*choices: none, magnitude"),
    (["prune.mask_init=kaiminng"], r"unknown prune\.mask_init 'kaiminng'; did you mean 'kaiming'\?"),
    (["prune.method=sigmoied_threshold", "prune.initial_threshold=0",
      "prune.regularization=L1", "prune.final_lambda=1"],
     r"unknown prune\.regularization 'L1'; did you mean 'l1'\?"),
    (["model.dtype=float16"], r"unknown model\.dtype 'float16'; did you mean 'bfloat16'\?"),
    # ranges
    (["prune.final_threshold=0"], r"prune\.final_threshold is the fraction of weights kept by topk"),
    (["prune.initial_threshold=1.5"], r"prune\.initial_threshold .* must be in \(0, 1\], got 1\.5"),
    (["prune.method=magnitude", "prune.final_threshold=-0.1"], r"kept by magnitude"),
    (["prune.method=sigmoied_threshold", "prune.initial_threshold=0", "prune.final_threshold=1"],
     r"prune\.final_threshold is the sigmoid threshold .* must be in \(0, 1\), got 1\.0"),
    (["prune.method=sigmoied_threshold", "prune.initial_threshold=0", "prune.final_threshold=0"],
     r"must be in \(0, 1\), got 0\.0"),
    (["prune.method=l0", "prune.regularization=l0", "prune.final_threshold=0"],
     r"prune\.final_threshold scales lambda for l0"),
    (["prune.initial_warmup=-1"], r"prune\.initial_warmup must be >= 0"),
    (["prune.global_topk_frequency=0"], r"prune\.global_topk_frequency must be >= 1"),
    (["train.batch_size=0"], r"train\.batch_size must be >= 1, got 0"),
    (["train.epochs=0"], r"train\.epochs must be > 0"),
    (["train.learning_rate=0"], r"train\.learning_rate must be > 0"),
    (["train.scores_learning_rate=-1e-2"], r"train\.scores_learning_rate must be > 0"),
    (["train.warmup_steps=-1"], r"train\.warmup_steps must be >= 0"),
    (["train.max_steps=0"], r"train\.max_steps must be >= 1"),
    (["train.max_steps=100", "train.warmup_steps=40"], r"leaves no pruning steps"),
    (["distill.alpha_ce=-0.1"], r"distill\.alpha_ce must be >= 0"),
    (["distill.alpha_ce=0", "distill.alpha_distil=0"], r"must not both be 0"),
    (["distill.temperature=0"], r"distill\.temperature must be > 0"),
    (["model.dropout=1"], r"model\.dropout must be in \[0, 1\)"),
    (["mesh.model=0"], r"mesh\.model must be >= 1"),
    (["data.max_train_samples=0"], r"data\.max_train_samples must be >= 1"),
    # length buckets and the PRNG
    (["data.bucket_lengths=[]"], r"data\.bucket_lengths must not be empty"),
    (["data.bucket_lengths=[32, 16]"], r"data\.bucket_lengths must be strictly increasing"),
    (["data.bucket_lengths=[16, 16]"], r"data\.bucket_lengths must be strictly increasing"),
    (["data.bucket_lengths=[0, 16]"], r"data\.bucket_lengths must be >= 1, got \[0, 16\]"),
    (["data.bucket_lengths=16"], r"data\.bucket_lengths must be a list of integers, got int"),
    (["data.bucket_lengths=[16.5]"], r"data\.bucket_lengths must be a list of integers, got item float"),
    (["data.bucket_lengths=[16, 256]", "task.max_seq_length=128"],
     r"data\.bucket_lengths must be <= task\.max_seq_length \(128\), got \[16, 256\]"),
    (["task.name=squad", "data.bucket_lengths=[128]"],
     r"data\.bucket_lengths applies to classification and regression tasks, not squad"),
    (["data.bucket_mega_batch=0"], r"data\.bucket_mega_batch must be >= 1"),
    (["train.rng_impl=rgb"], r"unknown train\.rng_impl 'rgb'; did you mean 'rbg'\?"),
    (["task.name=squad", "task.max_seq_length=128", "task.doc_stride=128"],
     r"task\.doc_stride \(128\) must be < task\.max_seq_length \(128\)"),
    # cross-field pairings of method and regularization (the reference README's pairs)
    (["prune.regularization=l1", "prune.final_lambda=1"],
     r"prune\.regularization l1 \(soft movement\) requires prune\.method sigmoied_threshold, got 'topk'"),
    (["prune.regularization=l0"], r"prune\.regularization l0 requires prune\.method l0, got 'topk'"),
    (["prune.method=l0"], r"prune\.method l0 requires prune\.regularization l0, got null"),
    (["prune.method=l0", "prune.regularization=l1"], r"requires prune\.method sigmoied_threshold"),
    (["prune.method=magnitude", "prune.regularization=l1"], r"requires prune\.method sigmoied"),
    (["prune.final_lambda=400"], r"prune\.final_lambda=400\.0 has no effect without prune\.regularization"),
    (["prune.method=sigmoied_threshold", "prune.initial_threshold=0", "prune.global_topk=true"],
     r"prune\.global_topk applies to methods topk, magnitude and random"),
    # malformed overrides
    (["train.batch_size"], r"malformed override 'train\.batch_size': expected section\.key=value"),
    (["batch_size=8"], r"malformed override 'batch_size=8'.*did you mean 'train\.batch_size=8'\?"),
    (["train.batch.size=8"], r"malformed override 'train\.batch\.size=8'"),
    ([".batch_size=8"], r"malformed override"),
    (["train.batch_size=[1"], r"invalid YAML in --set train\.batch_size=\[1"),
]


@pytest.mark.parametrize("overrides, message", BAD_OVERRIDES,
                         ids=[" ".join(o) for o, _ in BAD_OVERRIDES])
def test_bad_override_raises_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, overrides)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bad_task_name_suggests():
    with pytest.raises(ConfigError, match=r"task\.name: unknown task 'sst-3'.*'sst2'"):
        load_config(None, ["task.name=sst-3"])


BAD_FILES = [
    ("prune:\n  final_treshold: 0.1\n",
     r"unknown config key 'prune\.final_treshold'; did you mean 'prune\.final_threshold'\? \(in '.*bad\.yaml'\)"),
    ("trainn:\n  batch_size: 8\n", r"unknown config section 'trainn'; did you mean 'train'\?"),
    ("batch_size: 8\n", r"unknown config section 'batch_size'; did you mean 'train\.batch_size'\?"),
    ("train:\n  batch_size: sixteen\n", r"train\.batch_size must be an integer, got str 'sixteen' \(config: .*bad\.yaml\)"),
    ("train:\n  learning_rate: '3e-5x'\n", r"train\.learning_rate must be a number"),
    ("model:\n  name: [a]\n", r"model\.name must be a string, got list"),
    ("- train\n- prune\n", r"config file '.*bad\.yaml' must be a mapping of sections, got list"),
    ("42\n", r"must be a mapping of sections, got int"),
    ("train: 5\n", r"config section 'train' must be a mapping of keys, got int 5"),
    ("train:\n  batch_size: [8\n", r"invalid YAML in '.*bad\.yaml' \(line \d+, column \d+\)"),
    ("base: 3\n", r"'base' in '.*bad\.yaml' must be a file name or a list of file names"),
    ("base: missing.yaml\n", r"cannot read config file '.*missing\.yaml': .* \(base of .*bad\.yaml\)"),
]


@pytest.mark.parametrize("text, message", BAD_FILES, ids=[t for t, _ in BAD_FILES])
def test_bad_file_raises_one_line(tmp_path, text, message):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read config file '.*nope\.yaml': No such file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"cannot read config file '.*': Is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(ConfigError, match=r"cannot read config file .*not UTF-8"):
        load_config(binary)


def test_empty_file_is_all_defaults(tmp_path):
    assert load_config(write(tmp_path / "empty.yaml", "")) == Config()
    assert load_config(write(tmp_path / "sections.yaml", "train:\nprune:\n")) == Config()
    assert load_config(None) == Config()


# ----------------------------------------------------------------------------------------------
# Dataclasses, dict and file round trips
# ----------------------------------------------------------------------------------------------


def test_sections_are_frozen_and_replace_validates():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'batch_size'"):
        cfg.train.batch_size = 3  # type: ignore[misc]
    assert cfg.replace(train=cfg.train.replace(batch_size=3)).train.batch_size == 3
    with pytest.raises(ConfigError, match=r"train\.batch_size must be >= 1"):
        cfg.train.replace(batch_size=0)
    with pytest.raises(ConfigError, match=r"must be a TrainConfig, got dict"):
        cfg.replace(train={"batch_size": 3})
    with pytest.raises(ConfigError, match=r"leaves no pruning steps"):
        cfg.replace(train=TrainConfig(max_steps=10, warmup_steps=5))
    assert PruneConfig(initial_warmup=1).initial_warmup == 1.0  # int accepted for float


def test_dict_round_trip():
    cfg = load_config(None, ["prune.patterns=[x, y]", "train.max_steps=1000",
                             "distill.teacher=some/teacher", "train.warmup_steps=10",
                             "data.bucket_lengths=[16, 32, 64]", "train.rng_impl=rbg"])
    d = config_to_dict(cfg)
    assert d["prune"]["patterns"] == ["x", "y"] and set(d) == set(C.SECTIONS)
    assert d["data"]["bucket_lengths"] == [16, 32, 64] and cfg.data.bucket_lengths == (16, 32, 64)
    defaults = load_config(None)
    assert defaults.data.bucket_lengths is None and defaults.data.bucket_mega_batch == 50
    assert defaults.train.rng_impl == "threefry"
    assert config_from_dict(d) == cfg
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(d))) == cfg
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.epoch'; did you mean 'train\.epochs'\?"):
        config_from_dict({"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"a config must be a mapping of sections"):
        config_from_dict(["train"])  # type: ignore[arg-type]


def test_save_load_round_trip_is_atomic(tmp_path):
    cfg = load_config(CONFIGS / "paper/squad/soft_movement.yaml",
                      ["distill.teacher=csarron/bert-base-uncased-squad-v1", "prune.patterns=[a$]",
                       "train.learning_rate=1e-5", "mesh.data=4"])
    out = tmp_path / "run" / "nested" / "config.yaml"
    save_config(cfg, out)
    assert load_config(out) == cfg
    assert yaml.safe_load(out.read_text())["prune"]["patterns"] == ["a$"]
    assert out.read_text() == dump_config(cfg)
    save_config(Config(), out)  # overwrite in place
    assert load_config(out) == Config()
    assert sorted(os.listdir(out.parent)) == ["config.yaml"]  # no temporary file left behind


def test_save_failure_leaves_no_temporary(tmp_path, monkeypatch):
    def boom(*_):
        raise OSError("disk full")
    monkeypatch.setattr(C.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_config(Config(), tmp_path / "config.yaml")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# Inheritance
# ----------------------------------------------------------------------------------------------


def test_base_is_relative_to_the_file_and_merges_key_by_key(tmp_path):
    write(tmp_path / "common" / "root.yaml", "train:\n  batch_size: 4\n  seed: 1\nmodel:\n  dtype: bfloat16\n")
    write(tmp_path / "common" / "mid.yaml", "base: root.yaml\ntrain:\n  seed: 2\n")
    leaf = write(tmp_path / "exp" / "leaf.yaml", "base: ../common/mid.yaml\ntrain:\n  epochs: 5\n")
    cfg = load_config(leaf)
    assert (cfg.train.batch_size, cfg.train.seed, cfg.train.epochs) == (4, 2, 5.0)
    assert cfg.model.dtype == "bfloat16"


def test_base_list_later_wins_and_diamonds_are_fine(tmp_path):
    write(tmp_path / "d.yaml", "train:\n  seed: 0\n  batch_size: 2\n")
    write(tmp_path / "b.yaml", "base: d.yaml\ntrain:\n  seed: 1\n")
    write(tmp_path / "c.yaml", "base: d.yaml\ntrain:\n  seed: 2\n")
    a = write(tmp_path / "a.yaml", "base: [b.yaml, c.yaml]\n")
    assert (load_config(a).train.seed, load_config(a).train.batch_size) == (2, 2)
    a2 = write(tmp_path / "a2.yaml", "base: [c.yaml, b.yaml]\ntrain:\n  batch_size: 9\n")
    assert (load_config(a2).train.seed, load_config(a2).train.batch_size) == (1, 9)


def test_several_config_files_merge_in_order(tmp_path):
    a = write(tmp_path / "a.yaml", "train:\n  seed: 1\n  batch_size: 4\n")
    b = write(tmp_path / "b.yaml", "train:\n  seed: 2\n")
    cfg = load_config([a, b], ["train.epochs=1"])
    assert (cfg.train.seed, cfg.train.batch_size, cfg.train.epochs) == (2, 4, 1.0)


def test_inheritance_cycles_are_caught(tmp_path):
    write(tmp_path / "self.yaml", "base: self.yaml\n")
    with pytest.raises(ConfigError, match=r"config inheritance cycle: .*self\.yaml -> .*self\.yaml"):
        load_config(tmp_path / "self.yaml")
    write(tmp_path / "x.yaml", "base: y.yaml\n")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "y.yaml", "base: sub/../z.yaml\n")
    write(tmp_path / "z.yaml", "base: [x.yaml]\n")
    with pytest.raises(ConfigError, match=r"cycle: .*x\.yaml -> .*y\.yaml -> .*z\.yaml -> .*x\.yaml") as info:
        load_config(tmp_path / "x.yaml")
    assert "\n" not in str(info.value)


def test_errors_in_a_base_name_the_base(tmp_path):
    write(tmp_path / "base.yaml", "prune:\n  methd: topk\n")
    leaf = write(tmp_path / "leaf.yaml", "base: base.yaml\n")
    with pytest.raises(ConfigError, match=r"did you mean 'prune\.method'\? \(in '.*base\.yaml'\)"):
        load_config(leaf)


# ----------------------------------------------------------------------------------------------
# Method registry, granularity, task names (no JAX, no data pipeline)
# ----------------------------------------------------------------------------------------------


def test_reading_a_config_imports_no_jax_and_no_data_pipeline():
    code = ("import sys, mvp_jax.config as c; c.load_config(None, ['task.name=SST-2']); "
            "print([m for m in sys.modules if m.startswith(('jax', 'flax', 'mvp_jax.data'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_granularity_default_and_choices():
    assert PruneConfig().granularity == "weight" and C.GRANULARITIES[0] == "weight"
    assert set(C.GRANULARITIES) == {"weight", "head", "neuron", "hybrid"}
    for name in methods.NAMES:  # every method takes weight granularity
        assert "weight" in methods.get(name).granularities
    assert config_to_dict(Config())["prune"]["granularity"] == "weight"
    with pytest.raises(ConfigError, match=r"^unknown prune\.granularity 'heads'; did you mean "
                                          r"'head'\? \(choices: weight, head, neuron, hybrid\)$"):
        load_config(None, ["prune.granularity=heads"])


def test_granularity_the_method_does_not_support():
    with pytest.raises(ConfigError, match=r"^prune\.granularity head does not apply to method "
                                          r"none \(it supports: weight\)$") as e:
        load_config(None, ["prune.method=none", "prune.granularity=head"])
    assert "\n" not in str(e.value)
    for name in methods.NAMES:  # what a method supports loads
        for g in methods.get(name).granularities:
            assert PruneConfig(method=name, granularity=g, initial_threshold=0.5,
                               regularization=methods.get(name).regularization
                               ).granularity == g


def test_method_alias_is_named_in_the_message():
    for alias, name in methods.PLAIN_NAMES.items():
        with pytest.raises(ConfigError, match=rf"^unknown prune\.method '{alias}'; did you mean "
                                              rf"'{name}'\? \(choices: none, magnitude"):
            load_config(None, [f"prune.method={alias}"])


def test_regularizations_are_those_the_methods_need():
    assert C.REGULARIZATIONS == ("l1", "l0") and C.METHODS == methods.NAMES
    for name in methods.NAMES:
        assert methods.get(name).regularization in (None, *C.REGULARIZATIONS)


def test_task_names_match_the_task_registry():
    from mvp_jax.data import custom, tasks
    assert task_names.NAMES == tuple(tasks.TASKS) and task_names.KINDS == custom.KINDS
    for alias, name in task_names.ALIASES.items():
        assert tasks.get_task(alias).name == name == task_names.canonical_task(alias.upper())
    for bad in ("sst-3", "squad2", "zzz"):
        with pytest.raises(tasks.DataError, match=rf"^unknown task '{bad}'\. ") as want:
            tasks.get_task(bad)
        with pytest.raises(ConfigError, match=rf"^task\.name: unknown task '{bad}'\. ") as got:
            load_config(None, [f"task.name={bad}"])
        assert str(got.value) == f"task.name: {want.value}"
