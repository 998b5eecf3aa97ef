"""The network modules: primitives, the mixed op, PC-DARTS grouped edges, the cell, the search and
fixed (genotype) networks. Everything here imports torch.
"""
