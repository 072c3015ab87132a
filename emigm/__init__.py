"""eMIGM: masked image generation (MaskGIT, MAR, masked diffusion and eMIGM as one framework).

Pieces: schedules (gamma), masking (training masks), model (MAE encoder-decoder), heads (diffusion,
categorical), sampler (the step-by-step loop), tokenizers, training, evaluation, CLI.
"""
__version__ = "0.1.0"
