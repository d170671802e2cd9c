"""The R² Block: query-modulated spatial pooling and recurrent temporal refinement.

Reference `r2tuning.md` §2. One set of weights (input MLPs, pooling projections, one
post-norm transformer decoder layer) is applied at every recurrent step; only the
scalar pooling scales (K) and gates (K-1) are per step. The K cached CLIP layers are
stored ascending (e.g. hidden states 9, 10, 11, 12) and walked from the last to the first.

Shape letters as in :mod:`r2` (B batch, T clips, K layers, N tokens, D width, S query tokens,
Dt query width, C hidden width).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dropout import Dropout, bernoulli_mask
from .lean_input import norm_dropout_linear
from .lean_pool import attend_tokens, attention_weights


class InputMLP(nn.Module):
    """LN -> Dropout -> Linear(d_in, C) -> ReLU -> LN(C) -> Dropout -> Linear(C, C).

    Official ``video_map`` / ``query_map`` (Sequential indices 0, 2, 4, 6 hold the weights).
    """

    def __init__(self, in_dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.norm_in = nn.LayerNorm(in_dim)
        self.fc_in = nn.Linear(in_dim, hidden_dim)
        self.norm_hidden = nn.LayerNorm(hidden_dim)
        self.fc_out = nn.Linear(hidden_dim, hidden_dim)
        self.dropout = Dropout(dropout)

    def first(self, x: torch.Tensor) -> torch.Tensor:  # (..., d_in) -> (..., C)
        """LN -> Dropout -> Linear(d_in, C): the stage at the input width."""
        return self.fc_in(self.dropout.after_norm(self.norm_in, x))

    def middle(self, x: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., C)
        """ReLU -> LN(C) -> Dropout: from the output of ``fc_in`` to the input of ``fc_out``."""
        return self.dropout.after_norm(self.norm_hidden, F.relu(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., d_in) -> (..., C)
        return self.fc_out(self.middle(self.first(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop a whole sample's residual branch with probability p (training only)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, ...)
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def sinusoidal_position_encoding(lengths: torch.Tensor, num_positions: int, dims: int,
                                 temperature: float = 10000.0) -> torch.Tensor:
    """Normalised sinusoidal positional encoding (nncore ``PositionalEncoding(normalize=True)``).

    Position n = 1..T is normalised to n / (length + 1e-6) * 2pi; channel pairs (2m, 2m+1)
    hold sin / cos of n̂ / temperature^(2m / C) (interleaved, DETR style). No parameters.

    lengths: (B,) float, the normalisation length per sample (the padded T for the official
    batch quirk, the true T_b otherwise). Returns (B, T, C) float32.
    """
    device = lengths.device
    pos = torch.arange(1, num_positions + 1, device=device, dtype=torch.float32)  # (T,)
    pos = pos[None, :] / (lengths.float()[:, None] + 1e-6) * (2 * math.pi)  # (B, T)
    channel = torch.arange(dims, device=device)
    divisor = temperature ** ((channel // 2 * 2) / dims)  # (C,)
    angle = pos[:, :, None] / divisor  # (B, T, C)
    pe = torch.stack((angle[:, :, 0::2].sin(), angle[:, :, 1::2].cos()), dim=3)  # (B, T, C/2, 2)
    return pe.flatten(start_dim=2)  # (B, T, C)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections (nncore layout), key padding mask."""

    def __init__(self, dims: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dims, dims)
        self.k_proj = nn.Linear(dims, dims)
        self.v_proj = nn.Linear(dims, dims)
        self.out_proj = nn.Linear(dims, dims)
        for m in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_mask: torch.Tensor) -> torch.Tensor:
        # q (B, Lq, C), k/v (B, Lk, C), key_mask (B, Lk) bool (True = attend) -> (B, Lq, C)
        b, lq, c = q.shape
        h = self.heads
        q = self.q_proj(q).view(b, lq, h, c // h).transpose(1, 2)  # (B, h, Lq, C/h)
        k = self.k_proj(k).view(b, -1, h, c // h).transpose(1, 2)  # (B, h, Lk, C/h)
        v = self.v_proj(v).view(b, -1, h, c // h).transpose(1, 2)  # (B, h, Lk, C/h)
        mask = key_mask[:, None, None, :]  # (B, 1, 1, Lk)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, Lq, C/h)
        out = out.transpose(1, 2).reshape(b, lq, c)
        return self.out_proj(out)


class FeedForward(nn.Module):
    """Linear(C, r*C) -> ReLU -> Linear(r*C, C); Kaiming-normal (fan_out) weights, zero biases."""

    def __init__(self, dims: int, ratio: int):
        super().__init__()
        self.fc1 = nn.Linear(dims, dims * ratio)
        self.fc2 = nn.Linear(dims * ratio, dims)
        for m in (self.fc1, self.fc2):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., C)
        return self.fc2(F.relu(self.fc1(x)))


class TemporalDecoderLayer(nn.Module):
    """Post-norm transformer decoder layer, order cross-attention -> self-attention -> FFN.

    The positional encoding is added to the decoder queries (cross-attention query,
    self-attention query and key), never to the text memory or to the values.
    """

    def __init__(self, dims: int, heads: int, ffn_ratio: int, droppath: float):
        super().__init__()
        self.cross_attn = MultiHeadAttention(dims, heads)
        self.cross_norm = nn.LayerNorm(dims)
        self.self_attn = MultiHeadAttention(dims, heads)
        self.self_norm = nn.LayerNorm(dims)
        self.ffn = FeedForward(dims, ffn_ratio)
        self.ffn_norm = nn.LayerNorm(dims)
        self.droppath = DropPath(droppath)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, pe: torch.Tensor,
                x_mask: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        # x (B, T, C), memory (B, S, C), pe (B, T, C), x_mask (B, T), memory_mask (B, S) -> (B, T, C)
        d = self.cross_attn(x + pe, memory, memory, memory_mask)
        x = self.cross_norm(x + self.droppath(d))
        q = x + pe
        d = self.self_attn(q, q, x, x_mask)
        x = self.self_norm(x + self.droppath(d))
        d = self.ffn(x)
        return self.ffn_norm(x + self.droppath(d))


@dataclass
class R2BlockOutput:
    """What the R² Block hands to the pyramid, heads and calibration losses.

    hidden: (B, T, C) refined clip sequence after the last step (first CLIP layer).
    query_tokens: (B, S, C) mapped query tokens of the last step.
    layer_video_cls: (K, B, T, C) mapped CLS token per clip at each step.
    layer_query_tokens: (K, B, S, C) mapped query tokens at each step.
    The per-layer collections are in step order (last CLIP layer first), as in the official code.
    """

    hidden: torch.Tensor
    query_tokens: torch.Tensor
    layer_video_cls: torch.Tensor
    layer_query_tokens: torch.Tensor


class R2Block(nn.Module):
    """Recurrent, query-modulated refinement of K CLIP layers into a clip sequence.

    forward(video (B, T, K, N, D), video_mask (B, T), query (B, K, S, Dt), query_mask (B, S),
    quirks: bool) -> R2BlockOutput.
    """

    def __init__(self, video_dim: int, query_dim: int, num_layers: int, hidden_dim: int = 256,
                 num_heads: int = 8, ffn_ratio: int = 4, dropout: float = 0.5,
                 droppath: float = 0.1, use_tef: bool = True):
        super().__init__()
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.use_tef = use_tef
        # Official construction order: video_map, query_map, gate, v_map, q_map, scale, tem.
        self.video_mlp = InputMLP(video_dim + 2 if use_tef else video_dim, hidden_dim, dropout)
        self.query_mlp = InputMLP(query_dim, hidden_dim, dropout)
        # sigmoid(gate[i]) mixes the pooled clip with the previous step's output at step i < K-1
        self.gate = nn.Parameter(torch.zeros(num_layers - 1)) if num_layers > 1 else None
        self.pool_key = nn.Linear(hidden_dim, hidden_dim)  # official v_map (keys over the N tokens)
        self.pool_query = nn.Linear(hidden_dim, hidden_dim)  # official q_map (queries from the S tokens)
        self.pool_scale = nn.Parameter(torch.zeros(num_layers))  # tanh(scale[i]) weighs the pooled token
        self.temporal = TemporalDecoderLayer(hidden_dim, num_heads, ffn_ratio, droppath)

    @staticmethod
    def temporal_endpoint_features(num_clips: int, lengths: torch.Tensor) -> torch.Tensor:
        """[j / L, (j + 1) / L] for clip j, with L the normalisation length per sample.

        lengths: (B,) -> (B, T, 2) float32.
        """
        j = torch.arange(num_clips, device=lengths.device, dtype=torch.float64)  # (T,)
        denom = lengths.to(torch.float64)[:, None]  # (B, 1)
        start = j[None, :] / denom  # (B, T)
        return torch.stack((start, start + 1.0 / denom), dim=-1).float()  # (B, T, 2)

    def forward(self, video: torch.Tensor, video_mask: torch.Tensor, query: torch.Tensor,
                query_mask: torch.Tensor, quirks: bool, mask_pool: bool = False):
        b, t, k, n, _ = video.shape
        c = self.hidden_dim
        lengths = video_mask.sum(1)  # (B,) true clip counts
        # Official batch quirk: TEF and PE normalised by the padded batch length.
        # r2tuning.md §10 #3: recommendation taken (replicated in the quirk mode; per-sample T otherwise).
        norm_len = torch.full_like(lengths, t) if quirks else lengths.clamp(min=1)

        d = video.shape[-1]
        tef = None
        if self.use_tef:
            tef = self.temporal_endpoint_features(t, norm_len)[:, :, None, :]  # (B, T, 1, 2)
        pe = sinusoidal_position_encoding(norm_len, t, c)  # (B, T, C)

        # Masked max over query tokens: always outside the quirk mode (= each sample alone).
        # r2tuning.md §10 #4: recommendation taken (unmasked in the quirk mode, `mask_pool` ablation).
        pool_mask = None
        if mask_pool or not quirks:
            pool_mask = ~query_mask[:, None, :, None]  # (B, 1, S, 1), True = padded token

        padded_clip = ~video_mask[:, :, None, None]  # (B, T, 1, 1)
        qmask_tok = query_mask[:, :, None]  # (B, S, 1)

        # On the CPU the video MLP's first stage (at the CLIP width, over every token) runs a
        # block of clips at a time and is recomputed in backward (r2.model.lean_input), and the
        # token attention of the pooling rebuilds its h there (r2.model.lean_pool).
        lean = self._lean_input(video)
        lean_pooling = lean and torch.is_grad_enabled()
        layer_v, layer_q, last = [], [], None
        # r2tuning.md §10 #2: recommendation taken, layers stored ascending and walked in reverse
        # (last CLIP layer first); gate[i] and pool_scale[i] belong to stored layer i.
        for i in range(self.num_layers - 1, -1, -1):
            # Padded positions are zeroed (the official collate pads with inf, then zeroes);
            # r2tuning.md §10 #20: recommendation taken, explicit masks instead of +inf padding.
            if lean:
                u = self._lean_first_stage(video, i, video_mask, tef)  # (B, T, N, C)
            else:
                # The layer in float32 with the TEF appended, written into one new buffer
                # (autograd keeps it for the LayerNorm): no float copy before the mask, no cat.
                v_in = video.new_empty((b, t, n, d + 2 if tef is not None else d), dtype=torch.float32)
                v_in[..., :d].copy_(video[:, :, i]).masked_fill_(padded_clip, 0.0)  # (B, T, N, D)
                if tef is not None:
                    v_in[..., d:] = tef  # (B, T, N, D+2)
                u = self.video_mlp.first(v_in)  # (B, T, N, C)
            q_in = torch.where(qmask_tok, query[:, i].float(), 0.0)  # (B, S, Dt)
            q_emb = self.query_mlp(q_in)  # (B, S, C)
            layer_q.append(q_emb)  # (B, S, C)

            cls, pooled = self._spatial_pool(u, q_emb, pool_mask, lean=lean_pooling)
            layer_v.append(cls)  # mapped CLS token per clip, (B, T, C)
            e = cls + pooled * self.pool_scale[i].tanh()  # (B, T, C)

            if last is not None:  # recurrent gating (every step but the first)
                g = self.gate[i].sigmoid()
                e = g * e + (1 - g) * last

            last = self.temporal(e, q_emb, pe, video_mask, query_mask)  # (B, T, C)

        return R2BlockOutput(hidden=last, query_tokens=q_emb, layer_video_cls=torch.stack(layer_v),
                             layer_query_tokens=torch.stack(layer_q))

    def _spatial_pool(self, u: torch.Tensor, q_emb: torch.Tensor, pool_mask: torch.Tensor | None,
                      lean: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The rest of the video MLP and the query-modulated spatial pooling of one step.

        u: (B, T, N, C) output of ``video_mlp.fc_in``; q_emb: (B, S, C) mapped query tokens;
        pool_mask: (B, 1, S, 1) True = padded token, or None; lean: the token attention by
        :func:`r2.model.lean_pool.attend_tokens` (its own backward pass; the CPU training path)
        -> (mapped CLS token (B, T, C), pooled token (B, T, C)).

        With v_emb = fc_out(h) the mapped tokens: att = softmax_N(pool_query(q_emb) .
        pool_key(v_emb) / sqrt(C)), pooled = max_S(att @ v_emb + q_emb), independently per clip,
        no mask over N. Computed with the two Linears moved onto the S query tokens instead of
        the N tokens of every clip (the same function; S < N, and two of the three Linears over
        all tokens are gone): q . (Wk (Wo h + bo) + bk) = (q Wk Wo) . h + q . (Wk bo + bk), and
        att @ (Wo h + bo) = Wo (att @ h) + bo because each row of att sums to 1.
        """
        fc_out = self.video_mlp.fc_out
        queries = self.pool_query(q_emb)  # (B, S, C)
        q_key = queries @ self.pool_key.weight  # (B, S, C)
        offset = q_key @ fc_out.bias + queries @ self.pool_key.bias  # (B, S): one logit for all N
        keys = q_key @ fc_out.weight  # (B, S, C): query token s's key over h
        if lean:
            tokens = attend_tokens(u, keys, offset, self.video_mlp.norm_hidden, self.video_mlp.dropout)
            first, mixed = tokens.first, tokens.mixed  # (B, T, C), (B, T, S, C)
        else:
            h = self.video_mlp.middle(u)  # (B, T, N, C), v_emb = fc_out(h)
            att = attention_weights(h, keys, offset)  # (B, T, N, S)
            first, mixed = h[:, :, 0], att.transpose(2, 3) @ h  # (B, T, C), (B, T, S, C)
        cls = fc_out(first)  # (B, T, C)
        pooled = fc_out(mixed) + q_emb[:, None]  # (B, T, S, C)
        if pool_mask is not None:
            pooled = pooled.masked_fill(pool_mask, float("-inf"))
        return cls, pooled.amax(dim=2)  # (B, T, C) each

    def _lean_input(self, video: torch.Tensor) -> bool:
        """Whether the video MLP's first stage takes the memory-lean path: on the CPU, in float32
        (not under autocast), for features without gradient."""
        return (video.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
                and not video.requires_grad and not self.video_mlp.dropout.inplace)

    def _lean_first_stage(self, video: torch.Tensor, layer: int, video_mask: torch.Tensor,
                          tef: torch.Tensor | None) -> torch.Tensor:
        """``video_mlp.first(v_in)`` of one layer, -> (B, T, N, C)."""
        mlp = self.video_mlp
        keep = mlp.dropout.keep
        flat_tef = tef[:, :, 0] if tef is not None else None  # (B, T, 2)
        return norm_dropout_linear(video, layer, video_mask, flat_tef, mlp.norm_in, keep, mlp.fc_in)


__all__ = ["Dropout", "InputMLP", "DropPath", "bernoulli_mask", "MultiHeadAttention", "FeedForward", "TemporalDecoderLayer",
           "R2Block", "R2BlockOutput", "sinusoidal_position_encoding"]
