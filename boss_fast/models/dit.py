"""A small DiT-style transformer velocity network (Peebles & Xie, "Scalable Diffusion Models with
Transformers", 2023), class-free, for rectified-flow velocities.

Structure (adaLN-Zero): patch embedding (a stride-p convolution) + fixed 2-D sin-cos position embedding ->
``depth`` blocks, each LayerNorm (no affine) -> shift/scale from the conditioning -> attention or MLP ->
gated residual -> final LayerNorm with shift/scale -> a plain ``nn.Linear`` head -> unpatchify.
The conditioning is only the time: ``t`` (B,) -> sinusoidal features -> MLP.

The forward pass is deliberately ``self.unpatchify(self.head(self.trunk(x, t)))`` so a fused
head + unpatchify + Euler-step kernel can take ``trunk``'s (B, tokens, hidden) features and ``head``'s
weight and bias directly. Head output layout: token ``n = i * (W // p) + j`` (row-major over the patch
grid) and channel ``k = (pi * p + pj) * C + c`` hold pixel ``(c, i * p + pi, j * p + pj)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from boss_fast.kernels import unpatchify

__all__ = ["DiT", "timestep_embedding", "sincos_pos_embed_2d"]

# DiT feeds the network t * 1000 (its diffusion timestep range); keeping that scale means the sinusoid
# frequencies (1 down to 1e-4) resolve a step of 1/1000 in t as in the published model.
_TIME_SCALE = 1000.0
_FREQ_DIM = 256


def timestep_embedding(t: torch.Tensor, dim: int = _FREQ_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of times ``t`` (B,) in [0, 1] -> (B, dim) float32: [cos(f t'), sin(f t')]
    with t' = 1000 t and frequencies f = max_period^(-k / (dim/2)), k = 0 .. dim/2 - 1."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * _TIME_SCALE)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_pos_embed_2d(hidden: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (MAE / DiT) of a ``grid`` x ``grid`` token grid ->
    (grid * grid, hidden) float32, tokens in row-major order. Half the channels encode the row, half the
    column; ``hidden`` must be divisible by 4."""
    if hidden % 4 != 0:
        raise ValueError(f"hidden must be divisible by 4 for the 2-D sin-cos embedding, got {hidden}")
    quarter = hidden // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def embed(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([embed(rows), embed(cols)], dim=1).float()


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # x (B, T, h); shift, scale (B, h)
    return x * (1.0 + scale[:, None]) + shift[:, None]


class _TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(_FREQ_DIM, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t).to(self.mlp[0].weight.dtype)
        return self.mlp(freq)


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, h))


class _DiTBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        mlp_hidden = int(hidden * mlp_ratio)
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = _Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, hidden))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_a[:, None] * self.attn(_modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m[:, None] * self.mlp(_modulate(self.norm2(x), shift_m, scale_m))


class _FinalModulation(nn.Module):
    """The final adaLN: LayerNorm (no affine) then shift/scale from the conditioning (no head)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return _modulate(self.norm(x), shift, scale)


class DiT(nn.Module):
    """DiT velocity network ``velocity(x, t)`` for square images.

    Args:
        input_size: image height = width H (pixels or latent positions).
        patch_size: p; H must be divisible by p. Tokens: (H / p)^2.
        in_channels: C.
        hidden: token width; divisible by ``heads`` and by 4.
        depth: number of transformer blocks.
        heads: attention heads.
        mlp_ratio: MLP width / hidden.

    ``forward(x, t)``: x (B, C, H, W), t (B,) float times in [0, 1] (0 = noise, 1 = data; a 0-d t is
    broadcast) -> velocity (B, C, H, W) in x's dtype (computed in the parameters' dtype).

    Initialisation follows DiT's adaLN-Zero: every block's modulation and the final modulation and head
    are zero, so a fresh network outputs exactly 0 and each block starts as the identity.

    Example:
        >>> net = DiT(input_size=8, patch_size=2, in_channels=1, hidden=64, depth=2, heads=4)
        >>> net(torch.randn(3, 1, 8, 8), torch.rand(3)).shape
        torch.Size([3, 1, 8, 8])
    """

    # Opt-in to boss_fast.Sampler's fused-head protocol (boss_fast.sampler.FusedHeadModel): forward(x, t) is
    # exactly unpatchify(head(trunk(x, t))).to(x.dtype) in the layout of the module docstring, so a sampler
    # may run ``trunk`` and then one fused head GEMM + Euler kernel writing straight into the state.
    fused_head: bool = True
    # LoRA targets for straightening (boss_fast.straighten.default_lora_targets reads this attribute), as a
    # peft regex: every block's attention and MLP Linear layers (qkv, proj, mlp.0, mlp.2) and its adaLN
    # modulation, the final modulation and the head. The modulation carries the time: with it, rank 4 (7.5%
    # of the digits DiT) reached FD 44.9 at K = 2 after 600 iterations, against 70.0 on attention and MLP
    # only (5.0%) and 42.3 for the full fine-tune (benchmarks/results/straighten_sweep_lora.md).
    lora_targets: str = (
        r".*(blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(0|2)|adaLN_modulation\.1)|final\.adaLN_modulation\.1|head)"
    )

    def __init__(
        self,
        input_size: int = 8,
        patch_size: int = 2,
        in_channels: int = 1,
        hidden: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if input_size % patch_size != 0:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        if hidden % heads != 0:
            raise ValueError(f"hidden {hidden} is not divisible by heads {heads}")
        self.input_size = int(input_size)
        self.patch_size = int(patch_size)
        self.in_channels = int(in_channels)
        self.hidden = int(hidden)
        self.depth = int(depth)
        self.heads = int(heads)
        self.mlp_ratio = float(mlp_ratio)
        self.grid = self.input_size // self.patch_size
        self.out_features = self.patch_size * self.patch_size * self.in_channels

        self.patch_embed = nn.Conv2d(in_channels, hidden, kernel_size=patch_size, stride=patch_size)
        # Fixed, derived from the config: not persistent, so weight files hold only learned tensors.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden, self.grid)[None], persistent=False)
        self.t_embedder = _TimestepEmbedder(hidden)
        self.blocks = nn.ModuleList([_DiTBlock(hidden, heads, mlp_ratio) for _ in range(depth)])
        self.final = _FinalModulation(hidden)
        self.head = nn.Linear(hidden, self.out_features)
        self._init_weights()

    def config(self) -> dict[str, int | float]:
        """Constructor arguments: ``DiT(**net.config())`` builds the same architecture."""
        return {
            "input_size": self.input_size,
            "patch_size": self.patch_size,
            "in_channels": self.in_channels,
            "hidden": self.hidden,
            "depth": self.depth,
            "heads": self.heads,
            "mlp_ratio": self.mlp_ratio,
        }

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one state."""
        return (self.in_channels, self.input_size, self.input_size)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def _check(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, self.input_size, self.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"DiT expects x of shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
            )
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},) or be 0-d, got {tuple(t.shape)}")
        return t

    def trunk(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Features before the head: x (B, C, H, W), t (B,) -> (B, (H/p)^2, hidden) in the parameters'
        dtype, after the final LayerNorm and its time modulation."""
        t = self._check(x, t)
        dtype = self.patch_embed.weight.dtype
        tokens = self.patch_embed(x.to(dtype)).flatten(2).transpose(1, 2) + self.pos_embed.to(dtype)
        c = self.t_embedder(t)
        for block in self.blocks:
            tokens = block(tokens, c)
        return self.final(tokens, c)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, (H/p)^2, p*p*C) head outputs -> (B, C, H, W) images (layout in the module docstring):
        :func:`boss_fast.kernels.unpatchify`, the layout the fused head kernel writes."""
        return unpatchify(tokens, self.patch_size, self.in_channels, self.input_size, self.input_size)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unpatchify(self.head(self.trunk(x, t))).to(x.dtype)
