"""The k* engine's option defaults, kept apart from the engine so that the command line can show them in its help
without importing torch, scipy and numba (``kstar --help`` took about 7 s when it did). :mod:`kstar_utils.kstar`
uses them from here."""

# How method="auto" chooses, by the work N^2 * D (benchmarks/bench_kstar.py parts 3 and 5; README, Performance).
# With the graph and sampled rows, ANN / exact on data (a) (Gaussian classes in a 16-d subspace of 128-d), one run each
# on 2026-11-30: 0.60x at N = 25,000, 0.64x at 50,000, 1.09x at 100,000, 1.51x at 150,000 and 1.82x at 200,000: the
# crossover is near N^2 * D = 1.2e12, and on isotropic classes (data (b)) that path is slower or fails its audit.
# With the int8 scan (2026-12-01, a CPU with AVX512-VNNI; it runs on any features >= 64 wide there), on (a): 1.62x to
# 1.99x at N = 25,000, 2.17x to 2.58x at 50,000, 3.00x to 3.13x at 100,000, 3.17x to 3.21x at 150,000 and 2.7x to 4.1x
# at 200,000; on (b) 2.43x to 3.21x at 150,000 and 2.7x to 3.6x at 200,000: there ANN wins at every size measured,
# from N = 25,000. AUTO_ANN_MIN_WORK stays at 2e12 (N = 125,000 at D = 128) all the same: below it exact k* takes about
# 13 s or less here, and "auto" keeps the exact answer where it is that cheap rather than trade it for a 99.9% one to
# save a few seconds; machines without int8 products keep the graph's crossover too.
# Between AUTO_ANN_MIN_WORK and AUTO_EXACT_MAX_WORK "auto" runs ANN only where it was measured faster than exact:
# narrow features (AUTO_NARROW_DIMS), features where the candidate-space check finds a few principal axes that rank each
# sample's nearest foreign sample near the top (as in (a) and in learned features), and any features where the int8
# scan runs; otherwise it computes exact k* (the check costs about 1 s at N = 200,000, and nothing at all when no few
# axes hold 90% of the variance).
# Above AUTO_EXACT_MAX_WORK (N = 400,000 at D = 128) ANN runs on any features, its audit gate falling back to exact
# where it fails.
AUTO_ANN_MIN_WORK = 2.0e12
# Features this narrow count as low-dimensional in the middle sizes without a projection (a projection keeps at most
# half the axes, so 16 is the narrowest that one is tried on). 10 isotropic Gaussian classes in 16-d at N = 400,000
# (N^2 * D = 2.6e12), one run on 2026-11-30: ANN 93.3 s against exact's 173.3 s = 1.86x, 99.24% identical (audit
# 99.0%).
AUTO_NARROW_DIMS = 16
AUTO_EXACT_MAX_WORK = 2.0e13
# The graph only has to find the nearest foreign samples of samples near another class (the sampled rows find the
# others): 15 neighbours did that at N = 200,000 in half the time of 30 (benchmarks/bench_kstar.py, README).
DEFAULT_N_NEIGHBORS = 15
DEFAULT_AUDIT_SIZE = 1000
# How the ANN path finds candidates (kstar.compute_kstar's ``candidates``, kstar compute --candidates).
CANDIDATE_SOURCES = ("auto", "graph", "int8-scan")
