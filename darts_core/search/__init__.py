"""The architecture search: the bilevel step, the epoch loop, deriving a genotype from the alphas,
collapse guards and the optimizer factories. Everything here imports torch.
"""
