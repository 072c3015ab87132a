"""Sampling: the step-by-step sampler (a generator of immutable step states) and its fast path, one step's
network passes, CUDA-graph replay, step arithmetic without a model, traces, and what a model can run
(capabilities)."""
