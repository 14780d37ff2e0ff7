"""optax's own generic alias tests, run against every alias of ours.

The tests are read at test time from the installed optax wheel
(``optax/_src/alias_test.py``, which the wheel ships): the module is loaded as a private
copy whose ``alias`` namespace holds our aliases, and each of its generic test methods
(optimization of a parabola and of Rosenbrock's function in float32 and complex64, extra
arguments of ``update``, ``optax.inject_hyperparams``, the gradient's dtype kept,
``optax.MultiSteps``, a state stable in shape, dtype and sharding through ``lax.cond``
for six dtypes, ``mu_dtype``) runs unchanged with the arguments below. A new optax
release brings its new checks along; a regression in parity fails here.

The tests run as optax runs them: standard dtype promotion and rank promotion allowed
(optax's own test code mixes integer and float counts); our code runs under the strict
modes in every other test.
"""

from __future__ import annotations

import importlib.util
import types

import jax
import jax.numpy as jnp
import pytest

import adam_jax

pytest.importorskip("absl.testing.parameterized")
pytest.importorskip("sklearn")
pytest.importorskip("scipy")

# Every alias, with the keyword arguments optax's tests pass to it: (id, alias, kwargs).
# The classic names take optax's own entries (its `_OPTIMIZERS_UNDER_TEST`); the
# learning-rate-free ones their intended rate of 1; the others a rate that solves the two
# problems in optax's 10000 steps. The 8-bit aliases run twice: as given (the test's tiny
# leaves keep float32 moments) and with those leaves quantized too.
CASES = [
    ("adabelief", "adabelief", {"learning_rate": 1e-2}),
    ("adam", "adam", {"learning_rate": 1e-1}),
    ("adam8bit", "adam8bit", {"learning_rate": 1e-1}),
    ("adam8bit-quantized", "adam8bit", {"learning_rate": 1e-1, "min_quantized_size": 0}),
    ("adam_mini", "adam_mini", {"learning_rate": 1e-1}),
    ("adamax", "adamax", {"learning_rate": 1e-1}),
    ("adamaxw", "adamaxw", {"learning_rate": 1e-1}),
    ("adamw", "adamw", {"learning_rate": 1e-1}),
    ("adamw8bit", "adamw8bit", {"learning_rate": 1e-1}),
    ("adamw8bit-quantized", "adamw8bit", {"learning_rate": 1e-1, "min_quantized_size": 0}),
    ("adopt", "adopt", {"learning_rate": 1e-2}),
    ("amsgrad", "amsgrad", {"learning_rate": 1e-1}),
    ("cautious_adamw", "cautious_adamw", {"learning_rate": 1e-1}),
    ("dadapt_adamw", "dadapt_adamw", {"learning_rate": 1.0}),
    ("lazy_adam", "lazy_adam", {"learning_rate": 1e-1}),
    ("mechanic_adamw", "mechanic_adamw", {"learning_rate": 1.0}),
    ("nadam", "nadam", {"learning_rate": 1e-2}),
    ("nadamw", "nadamw", {"learning_rate": 1e-2}),
    ("prodigy", "prodigy", {"learning_rate": 1.0}),
    ("radam", "radam", {"learning_rate": 5e-3}),
    ("schedule_free_adamw", "schedule_free_adamw",
     {"learning_rate": 1e-2, "warmup_steps": 5000}),
]
# Where one of optax's tests cannot apply to a case, and why: (test, case id) -> reason.
_STATIC = ("min_quantized_size sizes the state: optax's test gives it to "
           "inject_hyperparams as a number, which it traces; pass it in static_args "
           "(tests/test_inject_hyperparams.py does)")
NOT_APPLICABLE = {
    ("inject", "adam8bit-quantized"): _STATIC,
    ("inject", "adamw8bit-quantized"): _STATIC,
    # Measured: 0.11 from the solution after the test's 10000 steps (tolerance 0.03), at
    # every inner rate from 0.1 to 3; optax's own mechanize(adam(1.0)) stays 2.0 away.
    ("optimization-rosenbrock-complex64", "mechanic_adamw"):
        "Mechanic converges too slowly on the complex Rosenbrock function for 10000 steps",
}


def test_every_alias_is_a_case():
  assert {name for _, name, _ in CASES} == set(adam_jax.optimizers())


def _load_optax_alias_tests():
  spec = importlib.util.find_spec("optax._src.alias_test")
  if spec is None or spec.origin is None:
    pytest.skip("optax's alias tests are not in the installed optax")
  copy = importlib.util.spec_from_file_location("_adam_jax_copy_of_optax_alias_test",
                                                spec.origin)
  module = importlib.util.module_from_spec(copy)
  with jax.numpy_dtype_promotion("standard"):
    copy.loader.exec_module(module)
  # `_get_opt(self, name)` is `getattr(alias, name)`: our aliases in its place.
  module.alias = types.SimpleNamespace(
      **{name: adam_jax.get_optimizer(name) for name in adam_jax.optimizers()})
  return module


_MODULE = None


def _module():
  global _MODULE
  if _MODULE is None:
    _MODULE = _load_optax_alias_tests()
  return _MODULE


def _run(test_name, **kwargs):
  """Runs optax's ``AliasTest.<test_name>`` (the undecorated method) with ``kwargs``."""
  module = _module()
  cls = module.AliasTest
  generated = next(n for n in dir(cls)
                   if n.startswith(test_name) and n[len(test_name):].isdigit())
  method, case = getattr(cls, generated), cls(generated)
  with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
    method.__wrapped__(case, **kwargs)


def _cases(test):
  return [pytest.param(name, kwargs, id=case) for case, name, kwargs in CASES
          if (test, case) not in NOT_APPLICABLE]


@pytest.mark.parametrize("opt_name,opt_kwargs", _cases("extra_args"))
def test_optimizers_accept_extra_args(opt_name, opt_kwargs):
  _run("test_optimizers_accept_extra_args", opt_name=opt_name, opt_kwargs=opt_kwargs)


@pytest.mark.parametrize("opt_name,opt_kwargs", _cases("inject"))
def test_optimizers_can_be_wrapped_in_inject_hyperparams(opt_name, opt_kwargs):
  _run("test_optimizers_can_be_wrapped_in_inject_hyperparams", opt_name=opt_name,
       opt_kwargs=opt_kwargs)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("opt_name,opt_kwargs", _cases("preserve_dtype"))
def test_preserve_dtype(opt_name, opt_kwargs, dtype):
  _run("test_preserve_dtype", opt_name=opt_name, opt_kwargs=opt_kwargs, dtype=dtype)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("opt_name,opt_kwargs", _cases("gradient_accumulation"))
def test_gradient_accumulation(opt_name, opt_kwargs, dtype):
  _run("test_gradient_accumulation", opt_name=opt_name, opt_kwargs=opt_kwargs, dtype=dtype)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64,
                                   jnp.complex64, jnp.complex128],
                         ids=["float16", "bfloat16", "float32", "float64", "complex64",
                              "complex128"])
@pytest.mark.parametrize("opt_name,opt_kwargs", _cases("stability"))
def test_state_shape_dtype_shard_stability(opt_name, opt_kwargs, dtype):
  _run("test_state_shape_dtype_shard_stability", opt_name=opt_name, opt_kwargs=opt_kwargs,
       dtype=dtype)


@pytest.mark.parametrize("state_dtype", ["bfloat16", "float32", "complex64", None])
@pytest.mark.parametrize("params_dtype", ["bfloat16", "float32", "complex64", None])
@pytest.mark.parametrize("opt_name", ["adam", "adamw"])
def test_explicit_dtype(opt_name, params_dtype, state_dtype):
  _run("test_explicit_dtype", opt_name=opt_name, params_dtype=params_dtype,
       state_dtype=state_dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "complex64"])
@pytest.mark.parametrize("target", ["parabola", "rosenbrock"])
@pytest.mark.parametrize("opt_name,opt_kwargs", _cases("optimization"))
def test_optimization(opt_name, opt_kwargs, target, dtype):
  reason = NOT_APPLICABLE.get((f"optimization-{target}-{dtype}", opt_name))
  if reason:
    pytest.skip(reason)
  setup = getattr(_module(), f"_setup_{target}")
  _run("test_optimization", opt_name=opt_name, opt_kwargs=opt_kwargs, target=setup,
       dtype=getattr(jnp, dtype))
