"""Training: the generic resumable loop, the generator's, the smoother's, the tokenizers' and the
classifier's tasks, the optimiser and the EMA."""
