"""Strictness for every test: bugs surface here, not in users' runs."""

import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# One compilation cache for the whole run, shared by the xdist workers (they inherit this
# environment) and the processes the tests start: a program that several tests compile (the
# same small model, shapes and options) is compiled by XLA once. A fresh folder each run,
# removed by the process that made it: nothing carries over from one run to the next.
if "ADAM_JAX_TEST_XLA_CACHE" not in os.environ:
  os.environ["ADAM_JAX_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="adam_jax_tests_xla_")
  _MADE_CACHE = os.environ["ADAM_JAX_TEST_XLA_CACHE"]
else:
  _MADE_CACHE = None
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["ADAM_JAX_TEST_XLA_CACHE"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


# Whole files of long tests; single long tests carry @pytest.mark.slow themselves.
_SLOW_FILES = ("test_properties.py", "test_sharding.py", "test_cli.py", "test_tuning.py",
               "test_tasks.py", "test_every_alias.py", "test_benchmarking.py",
               "test_quantization.py", "test_checkpoint.py", "test_diagnostics.py",
               "test_meta.py", "test_native_adam.py", "test_inject_hyperparams.py",
               "test_optax_suite.py", "test_flax_nnx.py")
# Long tests of files whose other tests belong to the quick loop.
_SLOW_TESTS = ("test_vmap_over_a_traced_hyperparameter", "test_state_is_sharded_like_the_params",
               "test_low_precision_params_keep", "test_dadapt_with_bias_correction",
               "test_prodigy_with_bias_correction", "test_plateau_rule_counts",
               "test_jit_equals_eager", "test_chain_with_clipping_equals_manual_clipping")


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _MADE_CACHE is not None:
    shutil.rmtree(_MADE_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
  """Marks the long tests ``slow``: ``pytest -m "not slow"`` is the quick loop."""
  del config
  for item in items:
    path = str(item.path)
    name = getattr(item, "originalname", item.name)
    if path.endswith(".ipynb") or path.endswith(_SLOW_FILES) or name.startswith(_SLOW_TESTS):
      item.add_marker("slow")


@pytest.fixture
def compile_once(tmp_path_factory):
  """XLA compiles each program once in the test: the same program again (a resumed run of
  the same shapes) is read from a compilation cache of its own."""
  from jax.experimental.compilation_cache import compilation_cache

  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  before = {name: getattr(jax.config, name) for name in names}
  compilation_cache.reset_cache()
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  try:
    yield
  finally:
    for name, value in before.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()
