"""Datasets: the registry that turns a dataset spec into tensors, and one module per file format.
The registry imports torch; the file readers (``npz``, ``cifar10``) need only numpy.
"""
