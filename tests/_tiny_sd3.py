"""The tiny random SD3 transformer the diffusers tests share (no downloads): 1 layer on 4 x 8 x 8 latents."""

import torch
from diffusers import SD3Transformer2DModel


def tiny_sd3_transformer(seed: int = 0) -> SD3Transformer2DModel:
    """A 1-layer SD3 transformer with random weights (seeded), in eval mode."""
    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=8,
        out_channels=4,
        pos_embed_max_size=8,
    ).eval()
