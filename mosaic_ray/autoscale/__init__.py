"""AutoScale (closed-loop real-synthetic data mixture, see ``../shared/docs/AUTOSCALE.md``): the
Ray-free algorithm core — scene clusters and their RBF transfer matrix (``clusters``), the
per-cluster performance predictor (``predictor``, Eq. 3-4), exponentiated-gradient mixture
updates with feasibility repair and normalised cluster gains (``mixture``, Eq. 5-7), anchor-based
retrieval of synthetic scenes (``retrieval``, Eq. 8), the importance-weighted retrieval
baseline IWR (``iwr``), and every selection method of the closed loop, its ablations and its
baselines over one Graph-RAE space (``methods``). Pipeline stages and Ray adapters live elsewhere and import these modules.
"""
