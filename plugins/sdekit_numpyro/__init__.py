"""Targets from probabilistic programs: NumPyro models and Bayesian logistic regression."""
