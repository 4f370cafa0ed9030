"""The tiny random Flux transformer the diffusers tests share (no downloads): 16 packed channels."""

import torch
from diffusers import FluxTransformer2DModel


def tiny_flux_transformer(seed: int = 0) -> FluxTransformer2DModel:
    """A Flux transformer (one double and one single block, guidance embedding) with random weights (seeded),
    in eval mode: packed latents (B, tokens, 16), text embeddings (B, T, 16), pooled (B, 8)."""
    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        pooled_projection_dim=8,
        guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    ).eval()
