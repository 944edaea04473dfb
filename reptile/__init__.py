"""Reptile (Nichol, Achiam & Schulman, 2018) in plain PyTorch.

This package is the algorithm only: task families, models, the inner loop, the meta-update and
evaluation. It imports nothing but torch and numpy, so the serial reference loop, the Ray actors
and the tests all run exactly the same code.
"""
