"""The float32 Adam step has no CPU kernel any more (removed: never faster); the 8-bit one stays.

The 8-bit kernel is tested with the 8-bit step (``tests/test_quantization.py``, both paths).
"""

import inspect
import os
import subprocess
import sys

import pytest

import adam_jax
from adam_jax import native

FLOAT32_STEP = ("scale_by_adam", "adam", "adamw", "amsgrad", "nadam", "nadamw")


@pytest.mark.parametrize("name", FLOAT32_STEP)
def test_the_float32_step_has_no_native_option(name):
  """Item 12: native=True on the float32 step was slower than the default program on every
  layout measured (0.62-1.17x optax): an option that only makes things slower is a trap."""
  assert "native" not in inspect.signature(getattr(adam_jax, name)).parameters
  with pytest.raises(TypeError, match="native"):
    getattr(adam_jax, name)(**({} if name == "scale_by_adam" else {"learning_rate": 1e-3}),
                            native=True)


def test_the_8bit_kernel_stays():
  assert native.KERNELS == ("adam8bit",)
  for name in ("scale_by_adam8bit", "adam8bit", "adamw8bit"):
    assert "native" in inspect.signature(getattr(adam_jax, name)).parameters


def test_unknown_kernel_names_raise():
  with pytest.raises(ValueError, match="unknown kernel"):
    native.available("adam")


def test_environment_turns_the_kernel_off_and_builds_nothing(tmp_path):
  code = ("import jax.numpy as jnp, adam_jax\n"
          "from adam_jax import native as n\n"
          "p = {'w': jnp.zeros(10)}\n"
          "tx = adam_jax.adam8bit(1e-3)\n"
          "tx.update(p, tx.init(p), p)\n"
          "print(n.available('adam8bit'), n.status('adam8bit'))\n")
  env = {**os.environ, "ADAM_JAX_NATIVE": "0", "ADAM_JAX_CACHE": str(tmp_path), "XLA_FLAGS": ""}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120, check=True).stdout
  assert out.strip() == "False disabled by ADAM_JAX_NATIVE=0"
  assert not list(tmp_path.iterdir())  # nothing built
