"""Datasets: Fashion-MNIST IDX files, ImageNet-style folders, synthetic images, encoded latents; and the
resumable data order of training (stream)."""
