"""The masked generative network: (tokens, mask, condition) -> per-token condition z.

MAE-style encoder-decoder of MAR / eMIGM with buffer (class) slots. Parameter names and shapes follow
the official eMIGM / MAR checkpoints so they load without renaming. The per-token head is attached
as `diffloss` (continuous tokens, name from the checkpoints) or `token_head` (discrete tokens); the
model never runs a sampling loop (see emigm.sample.sampler).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from emigm.core.config import RunConfig
from emigm.core.masking import masked_mean
from emigm.core.names import NULL_MODES
from emigm.nn.blocks import Block
from emigm.nn.categorical_head import CategoricalHead
from emigm.nn.diffusion_head import DiffusionHead

Tensor = torch.Tensor


@dataclass(frozen=True)
class Features:
    """hidden: (B, Bf + L, Dd) after the decoder's final norm; layer_io: per layer (input, output) when
    recorded (encoder layers in the MAE layout: visible positions only)."""

    hidden: Tensor
    layer_io: list[tuple[Tensor, Tensor]] | None = None


class MaskedGenerator(nn.Module):
    def __init__(self, cfg: RunConfig):
        super().__init__()
        self.cfg = cfg
        tk, bb, hd = cfg.tokenizer, cfg.backbone, cfg.head
        De, Dd, Bf, L = bb.width, bb.decoder_width, bb.buffer_size, tk.num_tokens
        self.num_tokens, self.buffer_size, self.num_classes = L, Bf, bb.num_classes
        self.discrete = tk.discrete
        self.null_mode = bb.null_mode
        self.mae = bb.mae
        self.grad_checkpointing = bb.grad_checkpointing

        self.class_emb = nn.Embedding(bb.num_classes, De)
        if bb.null_mode == "fake":
            self.fake_latent = nn.Parameter(torch.zeros(1, De))
            self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        elif bb.null_mode == "mask":
            # CFG with mask: ONE vector is both the null class (encoder) and the mask token (decoder).
            self.mask_token = nn.Parameter(torch.zeros(1, De))
        else:
            raise ValueError(f"unknown null_mode {bb.null_mode!r}; valid: {', '.join(NULL_MODES)}")
        if self.discrete:
            self.token_embed = nn.Embedding(tk.codebook_size, De)
        else:
            self.z_proj = nn.Linear(tk.token_dim, De, bias=True)
        self.z_proj_ln = nn.LayerNorm(De, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, L + Bf, De))
        self.encoder_blocks = nn.ModuleList(Block(De, bb.num_heads, bb.mlp_ratio, bb.attn_drop, bb.proj_drop) for _ in range(bb.encoder_depth))
        self.encoder_norm = nn.LayerNorm(De, eps=1e-6)
        self.decoder_embed = nn.Linear(De, Dd, bias=True)
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, L + Bf, Dd))
        self.decoder_blocks = nn.ModuleList(Block(Dd, bb.decoder_num_heads, bb.mlp_ratio, bb.attn_drop, bb.proj_drop) for _ in range(bb.decoder_depth))
        self.decoder_norm = nn.LayerNorm(Dd, eps=1e-6)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, L, Dd))
        self._init_weights()
        if hd.kind == "diffusion":
            self.diffloss = DiffusionHead(tk.token_dim, Dd, hd.width, hd.depth, hd.num_timesteps, hd.batch_mul,
                                          time_label=hd.time_label, prediction=hd.prediction, x0_clip=hd.x0_clip)
        else:
            self.token_head = CategoricalHead(Dd, tk.codebook_size, hd.label_smoothing)

    def _init_weights(self) -> None:
        for p in (self.class_emb.weight, self.mask_token, self.encoder_pos_embed_learned,
                  self.decoder_pos_embed_learned, self.diffusion_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        if self.null_mode == "fake":
            nn.init.normal_(self.fake_latent, std=0.02)
        if self.discrete:
            nn.init.normal_(self.token_embed.weight, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def head(self) -> DiffusionHead | CategoricalHead:
        return self.token_head if self.discrete else self.diffloss

    # ------------------------------------------------------------------ conditioning

    def null_vector(self, mode: str | None = None) -> Tensor:
        """The null-class vector (1, De) for classifier-free guidance."""
        mode = mode or self.null_mode
        if mode not in NULL_MODES:
            raise ValueError(f"unknown cfg mode {mode!r}; valid: {', '.join(NULL_MODES)}")
        if mode == self.null_mode:
            return self.fake_latent if mode == "fake" else self.mask_token
        raise ValueError(f"this model was trained with null mode {self.null_mode!r}; "
                         f"cfg mode {mode!r} needs a model trained with it")

    def condition(self, labels: Tensor, null: Tensor | None = None, mode: str | None = None) -> Tensor:
        """Class vectors (B, De): labels (B,) int64; rows where null (B,) bool is True get the null vector."""
        emb = self.class_emb(labels)
        if null is not None:
            emb = torch.where(null.unsqueeze(1), self.null_vector(mode).to(emb.dtype), emb)
        return emb

    # ------------------------------------------------------------------ network

    def _embed(self, tokens: Tensor) -> Tensor:
        return self.token_embed(tokens.long()) if self.discrete else self.z_proj(tokens)

    @property
    def layers(self) -> list[nn.Module]:
        """Every transformer block, bottom to top: the encoder's, then the decoder's."""
        return [*self.encoder_blocks, *self.decoder_blocks]

    def _run(self, blocks: nn.ModuleList, x: Tensor, keep: Tensor | None, td: list[Tensor] | None,
             record: list | None, last_rows: Tensor | None = None, td_bias: bool = False) -> Tensor:
        for i, block in enumerate(blocks):
            signal = None if td is None else td[i]
            x_in = x
            rows = last_rows if i == len(blocks) - 1 else None
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, keep, signal, None, td_bias, use_reentrant=False)
            else:
                x = block(x, keep, signal, rows, td_bias)
            if record is not None:
                record.append((x_in, x))
        return x

    def features(self, tokens: Tensor, mask: Tensor, cond: Tensor, num_visible: int | None = None,
                 td: list[Tensor] | None = None, record: bool = False, select: Tensor | None = None,
                 mask_buffer: bool = False, td_bias: bool = False) -> Features:
        """Hidden states of every position (buffer slots first), after the decoder's final norm.
        With select (B, n) token positions (0..L-1): only those positions' hidden states (B, n, D); the
        last decoder block then computes no other output (every position is still its key and value).

        tokens: (B, L, C) float or (B, L) int64 codes (values at masked positions are ignored);
        mask: (B, L) bool, True = masked; cond: (B, De) from `condition`.
        num_visible: max visible tokens over the batch, if the caller knows it (saves a host sync).
        td: top-down signals for self-guidance, one (B, Bf + L, D) tensor per layer of `layers`
        (added to that layer's attention values; in the MAE encoder only the visible positions'
        rows are used). record: also return every layer's (input, output).
        mask_buffer: the buffer (class) slots carry the raw mask token, as masked positions do, instead
        of `cond` (the public self-guidance code's second pass). td_bias: add the value bias to the
        top-down signal's values as well (emigm.nn.blocks).
        With MAE on, the encoder sees only the buffer slots and the visible tokens; rows with fewer
        visible tokens than the longest are padded and the padding is hidden from attention.
        """
        B, L = mask.shape
        Bf, n_enc = self.buffer_size, len(self.encoder_blocks)
        x = self._embed(tokens)
        x = torch.cat([cond.unsqueeze(1).expand(B, Bf, -1).to(x.dtype), x], dim=1)
        x = self.z_proj_ln(x + self.encoder_pos_embed_learned)
        if mask_buffer:
            x = torch.cat([self.mask_token.view(1, 1, -1).to(x.dtype).expand(B, Bf, -1), x[:, Bf:]], dim=1)
        masked = torch.cat([mask.new_zeros(B, Bf), mask], dim=1)  # (B, Bf + L)
        td_enc, td_dec = (None, None) if td is None else (td[:n_enc], td[n_enc:])
        io: list | None = [] if record else None
        if not self.mae:
            # as the reference's use_mae=False: masked positions carry the raw mask token, put in
            # after the position embedding and the LayerNorm
            x = torch.where(masked.unsqueeze(-1), self.mask_token.view(1, 1, -1).to(x.dtype), x)
            x = self._run(self.encoder_blocks, x, None, td_enc, io, td_bias=td_bias)
            x = self.decoder_embed(self.encoder_norm(x))
        else:
            counts = (~masked).sum(1)
            n = int(counts.max()) if num_visible is None else num_visible + Bf
            order = masked.to(torch.int8).argsort(dim=1, stable=True)[:, :n]  # visible positions first
            keep = torch.arange(n, device=x.device).unsqueeze(0) < counts.unsqueeze(1)
            keep_mask = None if bool(num_visible is None and (counts == n).all()) else keep
            gather = lambda v: v.gather(1, order.unsqueeze(-1).expand(-1, -1, v.shape[-1]))  # noqa: E731
            x = gather(x)
            if td_enc is not None:
                td_enc = [gather(v) for v in td_enc]
            x = self.encoder_norm(self._run(self.encoder_blocks, x, keep_mask, td_enc, io, td_bias=td_bias))
            x = self.decoder_embed(x)
            fill = self.mask_token.view(1, 1, -1).to(x.dtype)
            x = torch.where(keep.unsqueeze(-1), x, fill)  # padding carries the mask token, harmlessly
            full = fill.expand(B, Bf + L, -1).clone()
            x = full.scatter(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x)
        x = x + self.decoder_pos_embed_learned
        last = None if select is None else select + Bf
        x = self.decoder_norm(self._run(self.decoder_blocks, x, None, td_dec, io, last, td_bias))
        return Features(x, io)

    def to_z(self, hidden: Tensor, select: Tensor | None = None) -> Tensor:
        """Per-token conditions z (B, L, Dd) from the hidden states of `features`; with `select` (B, n),
        the (B, n, Dd) of those positions from features(..., select=select)."""
        if select is None:
            return hidden[:, self.buffer_size:] + self.diffusion_pos_embed_learned
        return hidden + self.diffusion_pos_embed_learned[0][select]

    def forward(self, tokens: Tensor, mask: Tensor, cond: Tensor, num_visible: int | None = None) -> Tensor:
        """Per-token condition z (B, L, Dd); see `features` for the arguments."""
        return self.to_z(self.features(tokens, mask, cond, num_visible).hidden)

    # ------------------------------------------------------------------ training loss

    def loss(self, tokens: Tensor, mask: Tensor, labels: Tensor, drop: Tensor,
             weight: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Training loss: the head's per-token loss on masked tokens, weighted by w(t), averaged over
        masked tokens. drop (B,) bool marks samples trained with the null class."""

        z = self(tokens, mask, self.condition(labels, drop))
        sel = mask.reshape(-1)
        flat_z = z.reshape(-1, z.shape[-1])[sel]
        target = (tokens.reshape(-1) if self.discrete else tokens.reshape(-1, tokens.shape[-1]))[sel]
        per_token = self.head.loss(flat_z, target, generator=generator)
        full = per_token.new_zeros(mask.numel()).masked_scatter(sel, per_token).view_as(mask)
        return masked_mean(full, mask, weight)
