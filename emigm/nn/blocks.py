"""Pre-norm ViT block with the parameter names of the MAR / eMIGM checkpoints
(norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2; LayerNorm eps 1e-6, exact GELU, no layer scale).

Dropout as the reference's blocks: `attn_drop` on the attention probabilities, `proj_drop` after the
attention projection and after both MLP layers; active in training mode only.
The attention takes an optional top-down signal `td` (self-guidance, emigm.nn.smoother): its value
projection W_v td is added to the values, V = W_v h + b_v + W_v td; queries and keys are unchanged.
With td_bias (the public self-guidance code, which runs the whole value layer on td) the bias is added a
second time, V = W_v h + b_v + W_v td + b_v.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)  # rows: q, then k, then v
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, keep: Tensor | None = None, td: Tensor | None = None,
                rows: Tensor | None = None, td_bias: bool = False) -> Tensor:
        """x (B, S, D); keep (B, S) bool, False for padded positions that no query may attend to;
        td (B, S, D) a top-down signal added to the values through W_v (with b_v as well when td_bias);
        rows (B, n): compute the output only for these positions (queries), every position still a key
        and value."""
        B, S, D = x.shape
        H = self.num_heads
        if rows is None:
            qkv = self.qkv(x)
            if td is not None:
                w_v, b_v = self.qkv.weight[2 * D:], self.qkv.bias[2 * D:] if td_bias else None
                qkv = torch.cat([qkv[..., :2 * D], qkv[..., 2 * D:] + F.linear(td, w_v, b_v)], dim=-1)
            q, k, v = qkv.view(B, S, 3, H, D // H).permute(2, 0, 3, 1, 4)
        else:
            if td is not None:
                raise ValueError("a top-down signal needs every position's output")
            kv = F.linear(x, self.qkv.weight[D:], self.qkv.bias[D:])
            k, v = kv.view(B, S, 2, H, D // H).permute(2, 0, 3, 1, 4)
            x_q = x.gather(1, rows.unsqueeze(-1).expand(-1, -1, D))
            q = F.linear(x_q, self.qkv.weight[:D], self.qkv.bias[:D]).view(B, -1, H, D // H).transpose(1, 2)
        attn_mask = None if keep is None else keep[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, q.shape[2], D)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), proj_drop)

    def forward(self, x: Tensor, keep: Tensor | None = None, td: Tensor | None = None,
                rows: Tensor | None = None, td_bias: bool = False) -> Tensor:
        """x (B, S, D) -> (B, S, D); with rows (B, n), only those positions' outputs (B, n, D)."""
        h = self.attn(self.norm1(x), keep, td, rows, td_bias)
        x = (x if rows is None else x.gather(1, rows.unsqueeze(-1).expand(-1, -1, x.shape[-1]))) + h
        return x + self.mlp(self.norm2(x))
