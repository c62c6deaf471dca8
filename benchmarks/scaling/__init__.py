"""The accuracy-scaling benchmark's workload, simulator and schemes (``benchmarks/accuracy_scaling.py`` runs them)."""
