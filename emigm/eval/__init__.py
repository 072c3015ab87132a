"""Evaluation: the Fashion-MNIST classifier and the metrics on its features (FD, precision / recall, class
accuracy, seam ratio), and scoring a model by sampling."""
