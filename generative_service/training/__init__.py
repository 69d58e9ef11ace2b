"""Training of the demo model (`gensvc models train-demo`) and its evaluation.

Nothing heavy is imported here: `demo.main` and `evaluate` import torch/diffusers themselves.
"""
