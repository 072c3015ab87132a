"""Files of models: inference exports, the loaded model bundle (network, tokenizer, smoother, sampling
rule), official checkpoints, training run folders, image files."""
