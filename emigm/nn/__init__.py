"""The networks: the MAE encoder-decoder, the per-token heads (diffusion and categorical) with the Gaussian
diffusion math and solvers, the self-guidance smoother, and size estimates from a config (budget)."""
