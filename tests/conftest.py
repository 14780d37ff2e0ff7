"""Strictness for every test: bugs surface here, not in users' runs."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


# Whole files of long tests; single long tests carry @pytest.mark.slow themselves.
_SLOW_FILES = ("test_properties.py", "test_sharding.py", "test_cli.py", "test_tuning.py",
               "test_tasks.py", "test_every_alias.py", "test_benchmarking.py",
               "test_quantization.py", "test_checkpoint.py", "test_diagnostics.py")


def pytest_collection_modifyitems(config, items):
  """Marks the long tests ``slow``: ``pytest -m "not slow"`` is the quick loop."""
  del config
  for item in items:
    path = str(item.path)
    if path.endswith(".ipynb") or path.endswith(_SLOW_FILES):
      item.add_marker("slow")
