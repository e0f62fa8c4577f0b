"""pytest setup: one BLAS thread, set before NumPy loads (vqref's matrices are small,
and threads only add contention; README, "Threads"; BENCHMARKS.md)."""
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
