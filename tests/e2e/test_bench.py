"""The benchmarks run, in their small size, so that they cannot rot between the machines they are for."""

import subprocess
import sys

import pytest

from helpers import REPO, cli_env


def test_bench_gpu_runs_every_part_on_a_cpu_in_its_small_size(tmp_path, cache_dir):
    pytest.importorskip("jax", reason="bench/gpu.py runs Keras on JAX (pip install -e '.[jax]')")
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--size", "small", "--work", str(tmp_path)],
                          cwd=tmp_path, env={**cli_env(cache_dir), "KERAS_BACKEND": "jax"}, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    row = next(line for line in table.splitlines() if line.startswith("| float32 | 32 |"))
    ceiling, host, device, ratio = (float(cell.replace(",", "")) for cell in row.strip("|").split("|")[2:])
    assert ceiling > 0 and host > 0 and device > 0
    assert ratio == pytest.approx(max(host, device) / ceiling, abs=0.01)
    assert "from start to the printed table" in table and "Projection (not measured)" in table
