"""Tokenizers: images <-> tokens (pixel patches, the Fashion-MNIST KL autoencoder and VQ-VAE, MAR's KL-16
VAE, DC-AE)."""
