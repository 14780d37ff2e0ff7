"""Diagnostics: what eps, the learning rate and the moments do inside Adam.

Adam's step for one parameter is :math:`\\eta\\, \\hat m_t / (\\sqrt{\\hat v_t} + \\epsilon)`.
Where :math:`\\sqrt{\\hat v_t} \\ll \\epsilon`, eps and not the gradient history sets the
step and Adam behaves like SGD with momentum at learning rate :math:`\\eta / \\epsilon`;
where :math:`\\sqrt{\\hat v_t} \\gg \\epsilon` the step is adaptive. The functions here read
an optimizer state and say which regime each parameter is in:

* :func:`eps_dominated_fraction` and :func:`advise_eps`: how much of the model eps
  controls, and a value of eps that controls almost none of it.
* :func:`effective_learning_rate`: per-leaf percentiles of :math:`\\eta / (\\sqrt{\\hat
  v_t} + \\epsilon)`.
* :func:`monitor`: a wrapper transformation recording, inside the compiled step,
  update and parameter RMS, their ratio, eps dominance and non-finite gradients.
* :func:`summarize` and :func:`plot_history`: named Python floats for a logger, and
  a figure of a run.

The Adam-like state is found anywhere inside chained or wrapped states: any
``NamedTuple`` with fields ``count`` and ``nu`` (``ScaleByAdamState``,
``ScaleByAmsgradState``, and optax's states of the same names, ``ScaleByBeliefState``).
States do not record ``eps`` or ``b2``; pass the values the optimizer was built with
(the defaults are Adam's, ``1e-8`` and ``0.999``).

.. warning::
  The second moment is read as a running mean of squared gradients. For Adamax,
  whose ``nu`` holds the infinity norm, and RAdam before its rectification switches
  on, the eps statistics do not describe the step taken. ``eps_root`` is ignored.
"""

from adam_jax.diagnostics._eps import (
    EpsAdvice,
    advise_eps,
    effective_learning_rate,
    eps_dominated_fraction,
)
from adam_jax.diagnostics._monitor import LeafStats, MonitorState, MonitorStats, monitor
from adam_jax.diagnostics._report import plot_history, summarize

__all__ = [
    "EpsAdvice",
    "LeafStats",
    "MonitorState",
    "MonitorStats",
    "advise_eps",
    "effective_learning_rate",
    "eps_dominated_fraction",
    "monitor",
    "plot_history",
    "summarize",
]
