"""Test settings: JAX on the CPU with 8 host devices (for the sharding tests), offline hub, and one
persistent XLA compilation cache for the whole test session.

The cache (``JAX_COMPILATION_CACHE_DIR``) is a temporary folder made when the session starts and
removed when it ends. It is set in the environment, so the subprocesses the tests start (CLI runs,
notebook kernels, pytest-xdist workers) read and fill the same one: a program that several tests
build (the same run killed and resumed, the same model evaluated twice) is compiled once.
``MVP_JAX_TEST_CACHE=off`` turns it off (to measure what it saves); ``MVP_JAX_TEST_CACHE=DIR``
keeps it in DIR, across sessions.
"""

import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _start_compilation_cache() -> str | None:
    """The session's cache folder (made here unless a parent process -- the xdist controller --
    made it), or None when off. Returns the folder this process must remove at the end."""
    choice = os.environ.get("MVP_JAX_TEST_CACHE", "")
    if choice.lower() in ("off", "0", "no"):
        return None
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:  # a parent made it (or the user chose one)
        return None
    if choice:
        os.makedirs(choice, exist_ok=True)
        os.environ["JAX_COMPILATION_CACHE_DIR"] = choice
        owned = None
    else:
        owned = tempfile.mkdtemp(prefix="mvp-jax-test-xla-cache-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = owned
    # every program, however small or quick to compile: the tests compile thousands of them
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    return owned


_OWNED_CACHE = _start_compilation_cache()

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


def pytest_sessionfinish(session, exitstatus):
    if _OWNED_CACHE and not os.environ.get("PYTEST_XDIST_WORKER"):
        shutil.rmtree(_OWNED_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"offline data not found at {SHARED_DATA} (../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tok():
    """The embedded MiniLM's tokenizer."""
    import transformers

    from mvp_jax.models import resolve_model_path

    return transformers.AutoTokenizer.from_pretrained(resolve_model_path("minilm-l6"))


@pytest.fixture(autouse=True, scope="session")
def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A random 2-layer BERT (hidden 32) with the real vocabulary and the MiniLM tokenizer, no
    task head (``_helpers_models.save_tiny_vocab_bert``): one per session, so the runs of every
    test file that only checks plumbing share its compiled programs."""
    from _helpers_models import save_tiny_vocab_bert

    return save_tiny_vocab_bert(tmp_path_factory.mktemp("tiny-bert") / "model", head=None)


@pytest.fixture(scope="session")
def tiny_bert_classifier(tmp_path_factory) -> Path:
    """``tiny_bert`` with a 2-label classification head of its own."""
    from _helpers_models import save_tiny_vocab_bert

    return save_tiny_vocab_bert(tmp_path_factory.mktemp("tiny-bert-cls") / "model",
                                head="classification")
