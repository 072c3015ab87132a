"""eMIGM: masked image generation (MaskGIT, MAR, masked diffusion and eMIGM as one framework).

Sub-packages by stage, each importing only from those before it (tests/test_layers.py):
core (names, configs, schedules, guidance, random numbers, files) < data < nn (networks, heads,
smoother) < tokenize < sample (the step-by-step sampler) < io (exports, loading, run folders) <
eval (classifier, metrics, scoring) < train (the loop and its tasks) < cli.
"""
__version__ = "0.2.0"
