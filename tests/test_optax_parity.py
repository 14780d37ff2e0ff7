"""A drop-in for optax: signatures, state classes, extra arguments, hyperparameter dtypes.

Every alias with an optax counterpart takes optax's arguments, positional ones in optax's
order (ours come after), with the exceptions listed in ``SIGNATURE_EXCEPTIONS`` (and in
``docs/conventions.md``). Where our state has optax's fields it is optax's class.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from tests import helpers

# The optax function each alias stands in for.
COUNTERPARTS = {
    "adabelief": optax.adabelief,
    "adam": optax.adam,
    "adamax": optax.adamax,
    "adamaxw": optax.adamaxw,
    "adamw": optax.adamw,
    "amsgrad": optax.amsgrad,
    "nadam": optax.nadam,
    "nadamw": optax.nadamw,
    "radam": optax.radam,
    "adopt": optax.contrib.adopt,
    "dadapt_adamw": optax.contrib.dadapt_adamw,
    "prodigy": optax.contrib.prodigy,
    "schedule_free_adamw": optax.contrib.schedule_free_adamw,
}
# The aliases optax has no counterpart of (their names are ours, or the method is not in
# optax): adam8bit, adamw8bit (bitsandbytes), adam_mini, cautious_adamw, lazy_adam
# (TensorFlow Addons), mechanic_adamw (optax has `mechanize` only).
NO_COUNTERPART = {"adam8bit", "adamw8bit", "adam_mini", "cautious_adamw", "lazy_adam",
                  "mechanic_adamw"}

_SYNONYM = "None: the value of our own name for it, whose default is optax's"
# Documented differences (docs/conventions.md, "Signatures"): alias -> {what: reason}.
SIGNATURE_EXCEPTIONS = {
    "prodigy": {
        "positional": "b1, b2, b3, d0, d_coef (the paper's and the authors' code's names, one "
                      "per rate as every alias here) where optax.contrib has betas, beta3, "
                      "estim_lr0, estim_lr_coef; those are accepted as keywords",
        "default weight_decay": "None (no decay term) where optax has 0.0: the same steps",
        "default betas": _SYNONYM, "default beta3": _SYNONYM, "default estim_lr0": _SYNONYM,
        "default estim_lr_coef": _SYNONYM,
    },
    "dadapt_adamw": {
        "positional": "b1, b2, d0 (the paper's names) where optax.contrib has betas, "
                      "estim_lr0; those are accepted as keywords",
        "default betas": _SYNONYM, "default estim_lr0": _SYNONYM,
    },
    "adopt": {
        "default clip_value_fn": "None, which means optax's t ** 0.25: a function as default "
                                 "would be taken for a schedule by optax.inject_hyperparams",
    },
}


def _params(fn):
  return inspect.signature(fn).parameters


def _positional(fn):
  return [p.name for p in _params(fn).values()
          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def test_every_alias_is_listed():
  assert set(COUNTERPARTS) | NO_COUNTERPART == set(adam_jax.optimizers())
  assert not set(COUNTERPARTS) & NO_COUNTERPART


@pytest.mark.parametrize("name", sorted(COUNTERPARTS))
def test_signature_is_optax_s(name):
  ours, theirs = adam_jax.get_optimizer(name), COUNTERPARTS[name]
  exceptions = SIGNATURE_EXCEPTIONS.get(name, {})
  our_params, their_params = _params(ours), _params(theirs)
  # Every keyword optax accepts, we accept.
  missing = [p for p in their_params if p not in our_params]
  assert not missing, f"{name} lacks optax's {missing}"
  # optax's positional parameters are ours, in optax's order, before any of ours.
  if "positional" not in exceptions:
    assert _positional(ours)[:len(_positional(theirs))] == _positional(theirs)
  else:
    assert _positional(ours) != _positional(theirs)[:len(_positional(ours))]  # still differs
  # A parameter keyword-only in optax may be positional in ours only after optax's.
  for p in their_params.values():
    if p.kind == p.KEYWORD_ONLY and our_params[p.name].kind != p.KEYWORD_ONLY:
      assert _positional(ours).index(p.name) >= len(_positional(theirs))
  # The same defaults, where optax has one.
  for p in their_params.values():
    if p.default is p.empty or f"default {p.name}" in exceptions:
      continue
    ours_default = our_params[p.name].default
    assert ours_default is not p.empty, f"{name}.{p.name} has no default; optax's is {p.default}"
    assert ours_default == p.default, f"{name}.{p.name}: {ours_default!r} vs {p.default!r}"


def test_the_exceptions_are_still_exceptions():
  """An exception that optax no longer has is removed from the list (and the docs)."""
  for name, exceptions in SIGNATURE_EXCEPTIONS.items():
    theirs = _params(COUNTERPARTS[name])
    for what in exceptions:
      if what.startswith("default ") and exceptions[what] != _SYNONYM:
        arg = what.removeprefix("default ")
        assert theirs[arg].default != _params(adam_jax.get_optimizer(name))[arg].default


@pytest.mark.parametrize("name", helpers.ALIASES)
def test_every_alias_takes_extra_arguments(name):
  tx = helpers.make_alias(name, 1e-2)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  plain, _ = jax.jit(tx.update)(grads, state, params)
  extra, _ = jax.jit(tx.update, static_argnames="unexpected_extra_argument")(
      grads, state, params, value=jnp.float32(1.0), unexpected_extra_argument=1)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(extra)):
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ optax's state classes

SAME_STATE = {
    "adam": (lambda: adam_jax.adam(1e-2), lambda: optax.adam(1e-2)),
    "adamw": (lambda: adam_jax.adamw(1e-2), lambda: optax.adamw(1e-2)),
    "nadam": (lambda: adam_jax.nadam(1e-2), lambda: optax.nadam(1e-2)),
    "nadamw": (lambda: adam_jax.nadamw(1e-2), lambda: optax.nadamw(1e-2)),
    "radam": (lambda: adam_jax.radam(1e-2), lambda: optax.radam(1e-2)),
    "adamax": (lambda: adam_jax.adamax(1e-2), lambda: optax.adamax(1e-2)),
    "adamaxw": (lambda: adam_jax.adamaxw(1e-2), lambda: optax.adamaxw(1e-2)),
    "adabelief": (lambda: adam_jax.adabelief(1e-2), lambda: optax.adabelief(1e-2)),
    "adopt": (lambda: adam_jax.adopt(1e-2), lambda: optax.contrib.adopt(1e-2)),
}


@pytest.mark.parametrize("name", sorted(SAME_STATE))
def test_the_state_is_optax_s(name):
  ours, theirs = (make() for make in SAME_STATE[name])
  params = helpers.make_params(seed=0)
  ours_state, their_state = ours.init(params), theirs.init(params)
  assert type(ours_state[0]) is type(their_state[0])
  # A tree map across the two states works: the same classes and structure.
  jax.tree.map(lambda a, b: None, their_state, ours_state)
  # optax's state goes straight into our update, and ours into optax's tools.
  grads = jax.tree.map(jnp.ones_like, params)
  with jax.numpy_dtype_promotion("standard"):  # optax mixes int counts and floats
    _, their_state = theirs.update(grads, their_state, params)
  _, new_state = ours.update(grads, their_state, params)
  assert int(optax.tree.get(new_state, "count")) == 2


def test_states_of_our_own_say_why():
  """Classes that are not optax's: their fields or their meaning differ (docstrings say)."""
  params = {"w": jnp.ones(2)}
  amsgrad = adam_jax.amsgrad(1e-2).init(params)[0]
  assert type(amsgrad) is adam_jax.ScaleByAmsgradState
  assert type(amsgrad) is not optax.ScaleByAmsgradState  # nu_max is the raw maximum
  for cls in (adam_jax.ScaleByAmsgradState, adam_jax.ScaleByAdam8bitState,
              adam_jax.ScaleByAdamStochasticState, adam_jax.ScaleByProdigyState,
              adam_jax.ScaleByDAdaptAdamState, adam_jax.MechanicState,
              adam_jax.ScheduleFreeAdamWState, adam_jax.ReduceOnPlateauState):
    assert "optax" in cls.__doc__, cls
  for name in ("lazy_adam", "cautious_adamw", "adam_mini"):
    state = helpers.make_alias(name).init(params)
    assert isinstance(state[0], optax.ScaleByAdamState)
  assert adam_jax.ScaleByAdamState is optax.ScaleByAdamState


# ----------------------------------------------------------------------- optax's keywords

def _trajectory(tx, steps=30, promotion="strict", dtype=jnp.float32):
  with jax.numpy_dtype_promotion(promotion):
    return helpers.run_jax(tx, helpers.make_params(seed=4, dtype=dtype), steps, dtype)


@pytest.mark.parametrize("name,kwargs", [
    ("nadam", {"nesterov": False}),
    ("nadamw", {"nesterov": False, "weight_decay": 0.1}),
    ("adabelief", {"nesterov": True}),
    # RAdam: our eps sits where torch puts it; with eps = 0 the two agree.
    ("radam", {"nesterov": True, "eps": 0.0}),
    ("radam", {"nesterov": False, "eps": 0.0}),
    ("amsgrad", {"bias_correction_nu": False}),
    ("amsgrad", {"bias_correction_mu": False, "bias_correction_nu": False}),
    ("adopt", {"nesterov": True}),
    ("adopt", {"use_clipping": False}),
    ("adopt", {"clip_value_fn": lambda t: 0.5 * jnp.sqrt(t.astype(jnp.float64))}),
])
def test_optax_keywords_give_optax_s_steps(name, kwargs):
  """In float64, where both compute exactly what they write (in float32 our bias
  corrections and RAdam's rho are the more accurate, by 1e-6 to 1e-5)."""
  with jax.enable_x64(True):
    ours = _trajectory(adam_jax.get_optimizer(name)(1e-2, **kwargs), dtype=jnp.float64)
    theirs = _trajectory(COUNTERPARTS[name](1e-2, **kwargs), promotion="standard",
                         dtype=jnp.float64)
  helpers.assert_traj_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_amsgrad_bias_corrections_change_the_step():
  steps = {flags: _trajectory(adam_jax.amsgrad(1e-2, bias_correction_mu=flags[0],
                                               bias_correction_nu=flags[1]), steps=3)
           for flags in [(True, True), (False, True), (True, False)]}
  first = {k: np.concatenate([a.ravel() for a in v[0]]) for k, v in steps.items()}
  assert not np.allclose(first[(True, True)], first[(False, True)])
  assert not np.allclose(first[(True, True)], first[(True, False)])


def test_schedule_free_takes_optax_s_arguments_in_optax_s_order():
  ours = adam_jax.schedule_free_adamw(1e-2, 5, 0.9, 0.99, 1e-8, 1e-3, 2.0, jnp.float32)
  keyword = adam_jax.schedule_free_adamw(learning_rate=1e-2, warmup_steps=5, b2=0.99,
                                         weight_decay=1e-3, weight_lr_power=2.0,
                                         state_dtype=jnp.float32)
  helpers.assert_traj_close(_trajectory(ours), _trajectory(keyword), rtol=0, atol=0)
  # As optax.contrib calls it: schedule_free_adamw(lr, warmup_steps).
  adam_jax.schedule_free_adamw(1e-2, 100)
  state = adam_jax.schedule_free_adamw(state_dtype=jnp.bfloat16).init({"w": jnp.ones(3)})
  assert state.z["w"].dtype == jnp.bfloat16 and state.nu["w"].dtype == jnp.float32


def test_schedule_free_weight_lr_power():
  # p = 0: every step weighs the same in the average (warm-up steps included).
  powers = {p: _trajectory(adam_jax.schedule_free_adamw(1e-2, weight_lr_power=p), steps=10)
            for p in (0.0, 2.0, 4.0)}
  last = {p: np.concatenate([a.ravel() for a in v[-1]]) for p, v in powers.items()}
  assert not np.allclose(last[0.0], last[2.0]) and not np.allclose(last[2.0], last[4.0])
  # A traced power (optax.inject_hyperparams) gives the same steps.
  tx = optax.inject_hyperparams(adam_jax.schedule_free_adamw)(1e-2, weight_lr_power=4.0)
  helpers.assert_traj_close(_trajectory(tx, steps=10), powers[4.0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["prodigy", "dadapt_adamw"])
def test_optax_contrib_names_are_accepted(name):
  alias = adam_jax.get_optimizer(name)
  extra = {"beta3": 0.95, "estim_lr_coef": 2.0} if name == "prodigy" else {}
  ours = {"b3": 0.95, "d_coef": 2.0} if name == "prodigy" else {}
  a = _trajectory(alias(betas=(0.8, 0.99), estim_lr0=1e-3, **extra), steps=10)
  b = _trajectory(alias(b1=0.8, b2=0.99, d0=1e-3, **ours), steps=10)
  helpers.assert_traj_close(a, b, rtol=0, atol=0)
  with pytest.raises(TypeError, match="betas"):
    alias(1.0, (0.9, 0.999))  # optax.contrib's positional pair
  with pytest.raises(TypeError, match="both"):
    alias(b1=0.8, betas=(0.9, 0.99))


# ------------------------------------------------------------ hyperparameters of any dtype

@pytest.mark.parametrize("name", helpers.ALIASES)
def test_hyperparameter_checks_accept_every_float_dtype(name):
  """optax.inject_hyperparams casts numbers to the params' dtype, bfloat16 included."""
  params = {"w": jnp.ones((4, 2), jnp.bfloat16), "b": jnp.zeros(2, jnp.bfloat16)}
  kwargs = {"b2": 0.95} if helpers.alias_takes(name, "b2") else {}
  lr = 1.0 if name in ("prodigy", "dadapt_adamw", "mechanic_adamw") else 1e-2
  tx = optax.inject_hyperparams(adam_jax.get_optimizer(name))(learning_rate=lr, **kwargs)
  state = tx.init(params)  # outside jit: the checks see bfloat16 arrays
  assert jax.tree.structure(state) == jax.tree.structure(jax.jit(tx.init)(params))
  grads = jax.tree.map(jnp.ones_like, params)
  eager, _ = tx.update(grads, state, params)
  jitted, _ = jax.jit(tx.update)(grads, state, params)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=1e-2, atol=1e-6)
  for value in (jnp.asarray(0.5, jnp.bfloat16), jnp.asarray(0.5, jnp.float16),
                np.float64(0.5), np.asarray(0.5, jnp.float8_e4m3fn)):
    adam_jax.adam(value, b1=value)


def test_a_rounded_hyperparameter_is_refused_with_the_fix():
  """b2 = 0.999 is 1.0 in bfloat16: optax's own Adam then returns NaN; we say why."""
  params = {"w": jnp.ones(3, jnp.bfloat16)}
  tx = optax.inject_hyperparams(adam_jax.adam)(learning_rate=1e-3)
  with pytest.raises(ValueError, match=r"b2 must be in .*bfloat16.*hyperparam_dtype=jnp.float32"):
    tx.init(params)
  fixed = optax.inject_hyperparams(adam_jax.adam, hyperparam_dtype=jnp.float32)(
      learning_rate=1e-3)
  u, _ = fixed.update(params, fixed.init(params), params)
  assert bool(jnp.all(jnp.isfinite(u["w"])))
  with pytest.raises(ValueError, match="must be a number"):
    adam_jax.adam(1e-3, b1=np.asarray(True))
