"""A pytest plugin (`-p hide_fashion_mnist`, with tests/ on PYTHONPATH) that points the data loader's default
Fashion-MNIST location at a folder that does not exist, as on a machine without the dataset."""
import emigm.data.datasets as datasets

datasets.DEFAULT_FASHION_MNIST = "/nonexistent/fashion-mnist"
