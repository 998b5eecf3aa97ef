"""Retraining a genotype from scratch: the resumable training loop, its keyword wrapper, trained
weights as safetensors and multiply-add counting. Everything here imports torch.
"""
