"""Tiny random SD3 and Flux pipelines built offline (no downloads) and saved with ``save_pretrained``.

Text stacks: both CLIP encoders (SD3: two; Flux: one) with a 54-token character vocabulary (vocab.json and
an empty merges.txt written here), T5 encoders with a character Unigram T5 tokenizer built from a vocab list
(no sentencepiece file). Real ``encode_prompt`` runs on them. A tiny random VAE with a scale
factor of 8 for the latents as the real SD3 and Flux VAEs have; tiny: 4 latent channels).
"""

from __future__ import annotations

import json
import os

import torch
from _tiny_flux import tiny_flux_transformer
from _tiny_sd3 import tiny_sd3_transformer
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def clip_tokenizer(folder: str) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over single characters (no merges): every letter a token."""
    os.makedirs(folder, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in LETTERS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return CLIPTokenizer(
        os.path.join(folder, "vocab.json"),
        os.path.join(folder, "merges.txt"),
        pad_token="<|endoftext|>",
        model_max_length=77,
    )


def t5_tokenizer() -> T5Tokenizer:
    """T5's Unigram tokenizer over single characters, from a vocab list (no sentencepiece model)."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    return T5Tokenizer(vocab=vocab + [(c, -3.0) for c in LETTERS], extra_ids=0)


def clip_encoder(hidden: int, projection: int | None, seed: int):
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=54, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=projection or hidden,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    cls = CLIPTextModelWithProjection if projection is not None else CLIPTextModel
    return cls(config).eval()


def t5_encoder(d_model: int, seed: int) -> T5EncoderModel:
    torch.manual_seed(seed)
    config = T5Config(vocab_size=30, d_model=d_model, d_kv=4, d_ff=2 * d_model, num_layers=1, num_heads=2,
                      relative_attention_num_buckets=8)  # fmt: skip
    return T5EncoderModel(config).eval()


def tiny_vae(seed: int = 6) -> AutoencoderKL:
    """Four blocks (a latent scale factor of 8), 4 latent channels, 4 feature channels."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(4, 4, 4, 4), layers_per_block=1,
        latent_channels=4, norm_num_groups=2, sample_size=32,
    ).eval()  # fmt: skip


def save_tiny_sd3(folder: str, dynamic: bool = False) -> str:
    """A StableDiffusion3Pipeline: CLIP-L/G stand-ins (hidden 8 each, projections 4 + 4 = the transformer's
    pooled 8), T5 (d_model 16 = joint_attention_dim), the tiny SD3 transformer, scheduler shift 3."""
    pipe = StableDiffusion3Pipeline(
        transformer=tiny_sd3_transformer(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=dynamic),
        vae=tiny_vae(),
        text_encoder=clip_encoder(8, 4, 1),
        tokenizer=clip_tokenizer(os.path.join(folder, "_clip")),
        text_encoder_2=clip_encoder(8, 4, 2),
        tokenizer_2=clip_tokenizer(os.path.join(folder, "_clip")),
        text_encoder_3=t5_encoder(16, 3),
        tokenizer_3=t5_tokenizer(),
    )
    pipe.save_pretrained(os.path.join(folder, "sd3"))
    return os.path.join(folder, "sd3")


def save_tiny_flux(folder: str) -> str:
    """A FluxPipeline: a CLIP stand-in (hidden 8, pooled 8), T5 (d_model 16), the tiny Flux transformer,
    the dynamic-shift scheduler Flux ships."""
    pipe = FluxPipeline(
        transformer=tiny_flux_transformer(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=tiny_vae(),
        text_encoder=clip_encoder(8, None, 4),
        tokenizer=clip_tokenizer(os.path.join(folder, "_clip")),
        text_encoder_2=t5_encoder(16, 5),
        tokenizer_2=t5_tokenizer(),
    )
    pipe.save_pretrained(os.path.join(folder, "flux"))
    return os.path.join(folder, "flux")
