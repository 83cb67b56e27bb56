"""Score-based generative modelling from data: denoising score matching and score networks."""
