"""The step-time benchmark behind ``adam-jax bench`` (one small, quick run)."""

import json

import jax

from adam_jax import _benchmarking as benchmarking


def test_run_reports_every_number_per_implementation(tmp_path, capsys):
  out = tmp_path / "bench.json"
  with jax.numpy_dtype_promotion("standard"):  # optax's own code needs it
    result = benchmarking.run("cpu", impls=["adam_jax", "optax.adam"], rounds=2, warmup=1,
                              layout_names=["one leaf"], out=str(out))
  layout = result["layouts"]["one leaf"]
  assert set(result["layouts"]) == {"one leaf"}
  assert layout["params"] == 2**22 and layout["leaves"] == 1
  assert layout["floor_ms"] > 0 and result["copy_GBps"] > 0
  assert set(layout["impls"]) == {"adam_jax", "optax.adam"}
  for row in layout["impls"].values():
    assert row["ms"] > 0 and row["compile_s"] > 0
    # GB/s is the 28 bytes per parameter over the median time.
    assert abs(row["GBps_at_28B"] - 28 * layout["params"] / row["ms"] / 1e6) < 1e-6 * row[
        "GBps_at_28B"]
    # At least the calling thread is busy while the step runs on the CPU.
    assert 0 < row["cores_busy"] < 64  # CPU time over wall time: low on a shared machine
  assert json.loads(out.read_text()) == json.loads(json.dumps(result))
  printed = capsys.readouterr().out
  assert "cores busy" in printed and "one leaf" in printed
