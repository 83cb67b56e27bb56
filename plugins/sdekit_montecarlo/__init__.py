"""Training-free samplers and baselines: the Föllmer drift, the Monte-Carlo score, NUTS and SMC."""
