"""The k* engine's option defaults, kept apart from the engine so that the command line can show them in its help
without importing torch, scipy and numba (``kstar --help`` took about 7 s when it did). :mod:`kstar_utils.kstar`
uses them from here."""

# N^2 * D above which method="auto" uses ANN. Measured (benchmarks/bench_kstar.py parts 3 and 5, two runs, README,
# Performance), ANN / exact speed-up on data (a) at D = 128: 0.44-0.48x at N = 25,000, 0.55-0.68x at 50,000,
# 0.66-0.77x at 100,000 and 1.45x at 200,000 (where the k-means cells pay off: classes of 20,000 rows). Exact has no
# error at all, and on isotropic data ANN fails its audit (then the gate stops it part-way and exact runs), so "auto"
# waits for twice that size: N = 400,000 at D = 128, N^2 * D = 2e13. Since the projected candidate search
# (2026-11-30) ANN is 1.8x faster at N = 200,000; the smaller sizes were not measured again, so the threshold stays.
AUTO_EXACT_MAX_WORK = 2.0e13
# The graph only has to find the nearest foreign samples of samples near another class (the sampled rows find the
# others): 15 neighbours did that at N = 200,000 in half the time of 30 (benchmarks/bench_kstar.py, README).
DEFAULT_N_NEIGHBORS = 15
DEFAULT_AUDIT_SIZE = 1000
