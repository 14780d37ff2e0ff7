"""Every row belongs to its run: identity, narrower resumes, whole rewrites, diverged rows."""

import csv
import importlib
import json

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax import checkpoint, tuning
from adam_jax._fingerprint import EXACT_BYTES, data_fingerprint, fingerprint

_grid = importlib.import_module("adam_jax.tuning._grid")


def _data(seed=0, n=96, scale=1.0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, 3)).astype(np.float32)
  y = (scale * (x @ np.array([1.0, -2.0, 0.5], np.float32))).astype(np.float32)
  return x, y


def _loss(p, b):
  return jnp.mean((b[0] @ p["w"] - b[1]) ** 2)


def _problem(seed=0, batch_size=16, **kw):
  x, y = _data(seed)
  return tuning.Problem({"w": jnp.zeros(3)}, _loss, (x[:64], y[:64]), (x[64:], y[64:]),
                        batch_size=batch_size, **kw)


SPACE = {"learning_rate": [1e-2, 3e-2, 1e-1]}


def _search(problem, tmp_path, space=SPACE, **kw):
  return tuning.grid_search(problem, space, steps=20, out_dir=tmp_path, progress=False, **kw)


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


# ---------------------------------------------------------------------------- run identity


@pytest.mark.parametrize("change, named", [
    (dict(problem=lambda: _problem(seed=1)), "train_data was"),
    (dict(problem=lambda: _problem(batch_size=8)), "batch_size was 16, is now 8"),
    (dict(optimizer=lambda learning_rate: optax.chain(optax.clip(1.0),
                                                      adam_jax.adam(learning_rate))),
     "optimizer was adam, is now"),
    (dict(steps=21), "steps was 20, is now 21"),
    (dict(seeds=2), "seeds was [0], is now [0, 1]"),
])
def test_a_resume_with_anything_changed_is_refused_naming_it(tmp_path, change, named):
  """Item 1: changed data, batch size or optimizer kept the old rows (val_loss 0.0088 of a
  model whose loss on the new data was 0.2968)."""
  _search(_problem(), tmp_path)
  before = (tmp_path / "results.csv").read_text()
  kwargs = {"steps": 20, "seeds": 1, "optimizer": "adam"}
  kwargs.update({k: v for k, v in change.items() if k != "problem"})
  problem = change.get("problem", _problem)()
  with pytest.raises(ValueError, match="cannot resume: .* holds another run") as info:
    tuning.grid_search(problem, SPACE, out_dir=tmp_path, resume=True, progress=False, **kwargs)
  assert named in str(info.value)
  assert (tmp_path / "results.csv").read_text() == before


def test_a_factory_is_named_by_its_source_and_closure(tmp_path):
  def make(clip):
    return lambda learning_rate: optax.chain(optax.clip(clip), adam_jax.adam(learning_rate))

  _search(_problem(), tmp_path, optimizer=make(1.0))
  _search(_problem(), tmp_path, optimizer=make(1.0), resume=True)  # the same run resumes
  with pytest.raises(ValueError, match="optimizer was .*<lambda> #.*, is now .*<lambda> #"):
    _search(_problem(), tmp_path, optimizer=make(2.0), resume=True)


def test_a_search_json_without_identity_is_refused(tmp_path):
  _search(_problem(), tmp_path)
  meta = json.loads((tmp_path / "search.json").read_text())
  del meta["model"]
  (tmp_path / "search.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="model was not recorded"):
    _search(_problem(), tmp_path, resume=True)


def test_fingerprints_follow_values_and_code():
  assert fingerprint(adam_jax.adam(3e-3)) != fingerprint(adam_jax.adam(3e-2))
  sched = lambda lr: adam_jax.adam(adam_jax.schedules.warmup_cosine(lr, 10, 100))  # noqa: E731
  assert fingerprint(sched(3e-3)) == fingerprint(sched(3e-3))
  assert fingerprint(sched(3e-3)) != fingerprint(sched(3e-2))
  scope_a, scope_b = {}, {}
  exec("def loss(p, b):\n  return (p - b) ** 2\n", scope_a)
  exec("def loss(p, b):\n  return abs(p - b)\n", scope_b)
  assert fingerprint(scope_a["loss"]).split(" #")[0] == "loss"
  assert fingerprint(scope_a["loss"]) != fingerprint(scope_b["loss"])
  x = np.arange(12, dtype=np.float32)
  assert data_fingerprint(x) == data_fingerprint(x.copy())
  y = x.copy()
  y[5] += 1
  assert data_fingerprint(x) != data_fingerprint(y)


def test_a_very_large_array_is_digested_by_its_documented_cheaper_rule(monkeypatch):
  fp = importlib.import_module("adam_jax._fingerprint")
  monkeypatch.setattr(fp, "EXACT_BYTES", 4096)
  monkeypatch.setattr(fp, "BLOCK_BYTES", 64)
  x = np.random.default_rng(0).standard_normal(100_000).astype(np.float32)
  assert fp._array_digest(x).startswith("sampled:")
  y = x.copy()
  y[54_321] += 1.0  # between sampled blocks: the word sum sees it
  assert fp._array_digest(x) != fp._array_digest(y)
  assert EXACT_BYTES == 256 << 20


def test_batch_fn_data_is_named_by_data_id():
  batch = lambda step, key: (jnp.ones((8, 3)), jnp.zeros(8))  # noqa: E731
  ident = importlib.import_module("adam_jax.tuning._identity")
  a = tuning.Problem({"w": jnp.zeros(3)}, _loss, batch, data_id="shards-v1")
  b = tuning.Problem({"w": jnp.zeros(3)}, _loss, batch, data_id="shards-v2")
  assert "data_id 'shards-v1'" in ident.problem_identity(a)["train_data"]
  assert ident.problem_identity(a)["train_data"] != ident.problem_identity(b)["train_data"]
  with pytest.raises(ValueError, match="data_id must be a string"):
    tuning.Problem({"w": jnp.zeros(3)}, _loss, batch, data_id=3)


def test_train_checkpoints_carry_the_identity(tmp_path):
  problem = _problem()
  kwargs = dict(eval_every=5, checkpoint_dir=tmp_path, checkpoint_every=5)
  tuning.train(problem, adam_jax.adam(3e-2), 10, **kwargs)
  again = tuning.train(problem, adam_jax.adam(3e-2), 10, resume=True, **kwargs)
  assert again.first_step == 10
  with pytest.raises(checkpoint.CheckpointIdentityError,
                     match="belongs to another run: optimizer was tx #"):
    tuning.train(problem, adam_jax.adam(3e-3), 10, resume=True, **kwargs)
  with pytest.raises(ValueError, match="already holds the checkpoints of an earlier run"):
    tuning.train(problem, adam_jax.adam(3e-2), 10, **kwargs)


def test_a_checkpoint_of_another_identity_is_refused(tmp_path):
  checkpoint.save_rotating(tmp_path, {"w": jnp.ones(2)}, identity={"lr": 0.03, "seed": 0})
  like = {"w": jnp.zeros(2)}
  assert checkpoint.restore_latest(tmp_path, like, identity={"lr": 0.03, "seed": 0})["w"][0] == 1
  with pytest.raises(checkpoint.CheckpointIdentityError, match="lr was 0.03, is now 0.003"):
    checkpoint.restore_latest(tmp_path, like, identity={"lr": 0.003, "seed": 0})
  with pytest.raises(checkpoint.CheckpointIdentityError, match="lr was not recorded"):
    checkpoint.save(tmp_path / "plain", {"w": jnp.ones(2)})
    checkpoint.restore(tmp_path / "plain", like, identity={"lr": 0.03})


# ---------------------------------------------------------------------------- rows kept


def test_a_narrower_space_resumes_what_it_names_and_keeps_every_other_row(tmp_path):
  """Item 3: a resume over fewer values rewrote results.csv and curves.jsonl without the
  other rows."""
  first = _search(_problem(), tmp_path)
  narrow = _search(_problem(), tmp_path, space={"learning_rate": [3e-2]}, resume=True)
  assert [r.config for r in narrow.rows] == [{"learning_rate": 3e-2}]
  assert narrow.rows[0].metrics["val_loss"] == pytest.approx(first.rows[1].metrics["val_loss"])
  assert [float(r["learning_rate"]) for r in _rows(tmp_path / "results.csv")] == [
      1e-2, 3e-2, 1e-1]
  assert len((tmp_path / "curves.jsonl").read_text().splitlines()) == 3
  wider = _search(_problem(), tmp_path, space={"learning_rate": [1e-2, 3e-2, 1e-1, 3e-1]},
                  resume=True)
  assert len(wider.rows) == 4 and len(_rows(tmp_path / "results.csv")) == 4
  meta = json.loads((tmp_path / "search.json").read_text())
  assert meta["space"] == {"learning_rate": [1e-2, 3e-2, 1e-1, 3e-1]}


def test_a_failed_rewrite_on_resume_loses_no_row(tmp_path, monkeypatch):
  """Item 4: results.csv was deleted and appended again on resume; a kill in that window
  left it missing or with 4 of 600 rows."""
  _search(_problem(), tmp_path)
  before = (tmp_path / "results.csv").read_text()
  curves = (tmp_path / "curves.jsonl").read_text()

  def full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(csv, "writer", full_disk)
  with pytest.raises(OSError, match="No space left"):
    _search(_problem(), tmp_path, resume=True)
  assert (tmp_path / "results.csv").read_text() == before
  assert (tmp_path / "curves.jsonl").read_text() == curves
  assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_to_csv_writes_a_whole_file_with_the_diverged_column(tmp_path):
  result = _search(_problem(), tmp_path / "s")
  path = result.to_csv(tmp_path / "rows.csv")
  rows = _rows(path)
  assert [r["diverged"] for r in rows] == ["False"] * 3


# ---------------------------------------------------------------------------- diverged rows


def _skewed_problem():
  """Labels 90% zeros: a model whose params are NaN predicts class 0 (argmax of NaNs)."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((200, 4)).astype(np.float32)
  y = ((rng.random(200) < 0.1) * (1 + (x[:, 0] > 0))).astype(np.int32)

  def loss(p, b):
    logits = b[0] @ p["w"] + p["b"][None, :]
    acc = jnp.mean((jnp.argmax(logits, -1) == b[1]).astype(jnp.float32))
    return optax.softmax_cross_entropy_with_integer_labels(logits, b[1]).mean(), {
        "accuracy": acc}

  init = {"w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32), "b": jnp.zeros(3)}
  return tuning.Problem(init, loss, (x[:150], y[:150]), (x[150:], y[150:]), batch_size=16)


def test_a_diverged_member_is_never_best_under_any_metric_or_mode(tmp_path):
  """Item 6: with metric="val_accuracy", mode="max", a member whose loss is NaN (it predicts
  the majority class) tied and was returned as best, its params NaN."""
  problem = _skewed_problem()
  space = {"learning_rate": [1e-4, 1e38]}
  result = tuning.grid_search(problem, space, steps=3, metric="val_accuracy", mode="max",
                              out_dir=tmp_path, progress=False)
  good, bad = result.rows
  assert bad.diverged and not good.diverged
  assert bad.metrics["val_accuracy"] >= good.metrics["val_accuracy"]  # the trap
  assert result.best.config == {"learning_rate": 1e-4}
  assert np.isfinite(np.asarray(result.best.model["w"])).all()
  assert [r["diverged"] for r in _rows(tmp_path / "results.csv")] == ["False", "True"]
  again = tuning.grid_search(problem, space, steps=3, metric="val_accuracy", mode="max",
                             out_dir=tmp_path, resume=True, progress=False)
  assert again.rows[1].diverged and again.best.config == {"learning_rate": 1e-4}
  alone = tuning.grid_search(problem, {"learning_rate": [1e38]}, steps=3,
                             metric="val_accuracy", mode="max", progress=False)
  assert alone.best is None and alone.rows[0].diverged


def test_halving_never_keeps_or_returns_a_diverged_configuration():
  problem = _skewed_problem()
  result = tuning.successive_halving(
      problem, {"learning_rate": [1e38, 1e-4, 3e-4]}, min_steps=2, max_steps=6, eta=3,
      metric="val_accuracy", mode="max", progress=False)
  assert result.rows[0].diverged and result.rows[0].steps == 2
  assert result.best is not None and not result.best.diverged
  alone = tuning.successive_halving(problem, {"learning_rate": [1e38]}, min_steps=2,
                                    max_steps=4, metric="val_accuracy", mode="max",
                                    progress=False)
  assert alone.best is None


def test_optuna_is_told_a_diverged_trial_failed():
  optuna = pytest.importorskip("optuna")
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  problem = _skewed_problem()
  study = optuna.create_study(direction="maximize")
  lrs = iter([1e38, 1e-4, 1e38, 3e-4])
  space_fn = lambda trial: {"learning_rate": next(lrs)}  # noqa: E731
  result = tuning.optuna_search(study, problem, space_fn, n_trials=4, batch_size_trials=4,
                                steps=4, metric="val_accuracy")
  states = [t.state.name for t in study.trials]
  assert states == ["FAIL", "COMPLETE", "FAIL", "COMPLETE"]
  assert [t.user_attrs.get("diverged", False) for t in study.trials] == [True, False, True,
                                                                         False]
  assert result.best is not None and not result.best.diverged
  assert [r.diverged for r in result.rows] == [True, False, True, False]


def test_an_optuna_study_of_another_run_is_refused():
  optuna = pytest.importorskip("optuna")
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = optuna.create_study()
  space_fn = lambda t: {"learning_rate": t.suggest_float("learning_rate", 1e-3, 1e-1)}  # noqa: E731
  tuning.optuna_search(study, _problem(), space_fn, n_trials=2, batch_size_trials=2, steps=4)
  tuning.optuna_search(study, _problem(), space_fn, n_trials=3, batch_size_trials=2, steps=4)
  with pytest.raises(ValueError, match="study .* holds another run .*train_data was"):
    tuning.optuna_search(study, _problem(seed=2), space_fn, n_trials=4, steps=4)
  assert len(study.trials) == 3


# ---------------------------------------------------------------------------- lr_find


def test_lr_find_says_when_the_loss_does_not_fall():
  """Item 7: a loss flat from 1e-5 to 1e-3 (the grid's best is 1e-2) gave 9.9e-6, no word."""
  x, y = _data(scale=3.0, n=512)
  problem = tuning.Problem({"w": jnp.zeros(3)}, _loss, (x, y), (x, y))
  flat = tuning.lr_find(problem, start_lr=1e-5, end_lr=1e-3)
  assert flat.suggestion is None and flat.valley is None
  assert "fell by only" in flat.reason and "larger end_lr" in flat.reason
  texts = [t.get_text() for t in flat.plot().axes[0].texts]
  assert any(t.startswith("No suggestion: the smoothed loss fell by only") for t in texts)
  wide = tuning.lr_find(problem, start_lr=1e-5, end_lr=1.0)
  assert wide.reason is None and 1e-3 < wide.suggestion < 1.0


# ---------------------------------------------------------------------------- problem errors


def test_errors_name_the_problem_when_it_is_built():
  """Item 11: a bare TypeError, dot_general's message without val_data, a dropped aux
  entry, metrics_fn names without the val_ prefix."""
  x, y = _data()
  with pytest.raises(ValueError, match=r"loss_fn\(model, val_data\) fails: TypeError: "
                                       r".*dot_general"):
    tuning.Problem({"w": jnp.zeros(3)}, _loss, (x, y), (np.zeros((8, 5), np.float32), y[:8]))

  def with_aux(p, b):
    err = b[0] @ p["w"] - b[1]
    return jnp.mean(err ** 2), {"errors": err}

  with pytest.raises(ValueError, match="aux 'errors' has shape .*must be scalars"):
    tuning.Problem({"w": jnp.zeros(3)}, with_aux, (x, y), (x, y))

  def init(key, width):
    return {"w": jnp.zeros(3) * width}

  needs_width = tuning.Problem(init, _loss, (x, y), (x, y))
  with pytest.raises(ValueError, match="has no default for width: give it a value in the "
                                       "search's space"):
    tuning.train(needs_width, adam_jax.adam(1e-2), 5)
  result = tuning.grid_search(needs_width, {"learning_rate": [1e-2], "width": [1.0]}, steps=2,
                              progress=False)
  assert result.rows[0].config == {"learning_rate": 1e-2, "width": 1.0}

  named = tuning.Problem({"w": jnp.zeros(3)}, _loss, (x, y), (x, y),
                         metrics_fn=lambda p, d: {"mae": jnp.mean(jnp.abs(d[0] @ p["w"] - d[1])),
                                                  "val_max": jnp.max(d[1])})
  metrics = tuning.train(named, adam_jax.adam(1e-2), 5).metrics
  assert {"val_mae", "val_max"} <= set(metrics) and "mae" not in metrics
