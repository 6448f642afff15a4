"""SAM's mask decoder: a two-way transformer between prompt tokens and image tokens, then
hypernetwork-weighted upscaled features give mask logits at 4x the embedding grid, and an MLP head
predicts each mask's IoU. Parameter names follow segment-anything.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .configs import MaskDecoderConfig
from .layers import MLP, LayerNorm2d

# the factored attention of the inference path runs where it saves at least this many multiply-adds per
# prompt (SAM ViT-B's decoder: ~75 M per attention; the 96-d decoder of tiny-synthetic on 16x16 tokens: 0.5 M)
_FOLD_MIN_SAVING = 1 << 21
_UPSCALE_CHUNK = 256  # fp32: image tokens per step of the inference upscaling (intermediates of <= 0.5 MB)
# bf16 / fp16: one step for SAM ViT-B's 64x64 tokens (13.7-14.1 ms per decode on an AMX CPU vs 16.8-17.3 in steps
# of 256 tokens)
_UPSCALE_CHUNK_16BIT = 4096


class TokenAttention(nn.Module):
    """Attention with separate q/k/v projections into ``dim // downsample_rate`` channels."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError("num_heads must divide dim // downsample_rate")
        self.q_proj = nn.Linear(dim, self.internal_dim)
        self.k_proj = nn.Linear(dim, self.internal_dim)
        self.v_proj = nn.Linear(dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """q BxNqxC, k/v BxNkxC -> BxNqxC; plus ``residual`` (BxNqxC) when given, which the factored path
        adds inside its last product instead of as one more pass over the output.

        Without autograd, attention between a few prompt tokens and many image tokens takes the
        factored path (:meth:`_few_queries` / :meth:`_few_keys`): the same function, with the
        image-sized projections folded into the few tokens' side (about 2.3x fewer multiply-adds for SAM
        ViT-B's decoder). Training keeps the plain path, so trained weights do not depend on it.

        Without autograd and autocast, image tokens may come in a lower precision than the weights (bf16
        image tokens, fp32 weights: the Predictor's bf16 decode on CPUs): the factored paths run every image-sized
        product in the image tokens' dtype and the few tokens' projections in the weights' (small products
        are ~3-5x faster in fp32 than in bf16 on CPUs); the plain path casts its inputs to the weights'."""
        if not torch.is_grad_enabled():
            few = self.num_heads * min(q.shape[1], k.shape[1])
            many = max(q.shape[1], k.shape[1])
            # worth it where it saves more multiply-adds than its few extra small ops cost
            if (self.internal_dim - few) * many * q.shape[-1] * q.shape[0] >= _FOLD_MIN_SAVING:
                if q.shape[1] > k.shape[1]:
                    return self._few_keys(q, k, v, residual)
                return _plus(residual, self._few_queries(q, k, v))
        return _plus(residual, self._plain(q, k, v))

    def _plain(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() or torch.is_autocast_enabled(q.device.type)):
            dt = self.q_proj.weight.dtype
            q, k, v = q.to(dt), k.to(dt), v.to(dt)  # mixed inference (see forward)
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))

    def _values_out(self, values: torch.Tensor) -> torch.Tensor:
        """Projected values BxNkxHxd -> their rows through the output projection, Bx(H*Nk)xC, head-major.

        The output bias is added to head 0's rows: every head's attention rows sum to 1, so a product with
        these rows adds it exactly once."""
        b, nk, h, d = values.shape
        vo = torch.einsum("bkhd,chd->bhkc", values, self.out_proj.weight.reshape(-1, h, d))  # BxHxNkxC
        vo[:, 0] += self.out_proj.bias
        return vo.reshape(b, h * nk, -1)

    @staticmethod
    def _rows_product(attn: torch.Tensor, vo: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """attn BxRxNq (R = heads x keys), vo BxRxC -> BxNqxC (+ residual)."""
        a, vo = attn.transpose(1, 2), vo.to(attn.dtype)
        return torch.bmm(a, vo) if residual is None else torch.baddbmm(residual.to(a.dtype), a, vo)

    def _per_head(self, linear: nn.Linear) -> torch.Tensor:
        """A projection into the internal channels as HxdxC (row h*d + i of the weight is head h's i)."""
        return linear.weight.reshape(self.num_heads, -1, linear.weight.shape[1])

    def _few_queries(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Few queries (prompt tokens), many keys (image tokens): BxNqxC, BxNkxC -> BxNqxC.

        Per head h, with Q_h the projected queries: the scores Q_h (W_k,h k + b_k,h)^T are
        (Q_h W_k,h) k^T plus a per-query constant that the softmax drops; the output P_h (v W_v,h^T + b_v,h)
        is (P_h v) W_v,h^T + b_v,h because the rows of P_h sum to 1. The keys and values are never
        projected."""
        b, nq, c = q.shape
        h = self.num_heads
        d = self.internal_dim // h
        queries = self.q_proj(q).reshape(b, nq, h, d)
        qk = torch.einsum("bnhd,hdc->bhnc", queries, self._per_head(self.k_proj)) * d**-0.5
        attn = torch.bmm(qk.reshape(b, h * nq, c).to(k.dtype), k.transpose(1, 2)).softmax(-1)  # Bx(H*Nq)xNk
        pv = torch.bmm(attn, v.to(attn.dtype)).reshape(b, h, nq, c).to(qk.dtype)
        out = torch.einsum("bhnc,hdc->bnhd", pv, self._per_head(self.v_proj)) + self.v_proj.bias.reshape(h, d)
        return self.out_proj(out.reshape(b, nq, h * d))

    def _few_keys(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  residual: torch.Tensor | None = None) -> torch.Tensor:
        """Many queries (image tokens), few keys (prompt tokens): BxNqxC, BxNkxC -> BxNqxC.

        Per head h, with K_h and V_h the projected keys and values: the scores (W_q,h q + b_q,h) K_h^T are
        q (W_q,h^T K_h^T) + b_q,h K_h^T, and the output projection of the heads' outputs is
        sum_h P_h (V_h W_o,h^T) + b_o. The queries are never projected, nor is the attention output.
        The scores are laid out (head, key, query) so that the softmax over the few keys runs along
        contiguous queries."""
        b, nq, c = q.shape
        nk = k.shape[1]
        h = self.num_heads
        d = self.internal_dim // h
        scale = d**-0.5
        keys = self.k_proj(k).reshape(b, nk, h, d)
        kq = torch.einsum("bkhd,hdc->bhkc", keys, self._per_head(self.q_proj)).reshape(b, h * nk, c) * scale
        offset = torch.einsum("bkhd,hd->bhk", keys, self.q_proj.bias.reshape(h, d)).reshape(b, h * nk, 1) * scale
        attn = torch.baddbmm(offset.to(q.dtype), kq.to(q.dtype), q.transpose(1, 2)).reshape(b, h, nk, nq).softmax(2)
        vo = self._values_out(self.v_proj(v).reshape(b, nk, h, d))
        return self._rows_product(attn.reshape(b, h * nk, nq), vo, residual)

    def per_head(self, x: torch.Tensor, channels_first: bool) -> torch.Tensor:
        """Projected image tokens BxNxD -> per head, contiguous: BxHxdxN (``channels_first``) or BxHxNxd."""
        b, n, _ = x.shape
        x = x.reshape(b, n, self.num_heads, -1)
        return (x.permute(0, 2, 3, 1) if channels_first else x.transpose(1, 2)).contiguous()

    def to_projected(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Attention of q BxNqxC to keys and values already projected (``k_proj`` / ``v_proj`` of the
        image tokens, e.g. computed once per image) and laid out per head (:meth:`per_head`): keys BxHxdxNk,
        values BxHxNkxd -> BxNqxC. The products run in the keys' dtype."""
        b, nq, _ = q.shape
        d = self.internal_dim // self.num_heads
        q = self._heads(self.q_proj(q)) * d**-0.5  # BxHxNqxd
        attn = (q.to(keys.dtype) @ keys).softmax(-1)  # BxHxNqxNk
        out = (attn @ values).to(q.dtype)
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, self.internal_dim))

    def projected_queries(self, queries: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          residual: torch.Tensor | None = None) -> torch.Tensor:
        """Image tokens as queries, already projected (``q_proj``, once per image) and laid out per head
        (BxHxdxNq, :meth:`per_head`), shared by ``P`` prompts each; k/v (B*P)xNkxC -> (B*P)xNqxC (+
        ``residual``, broadcastable to that).

        The same function as :meth:`forward` on the image tokens repeated ``P`` times per image; per
        prompt only the scores against its few keys and, where the few keys' value rows are fewer than the
        internal channels, the output projection folded into them (as in :meth:`_few_keys`) remain."""
        b, h, d, nq = queries.shape
        n, nk, _ = k.shape
        per = n // b
        queries = queries.unsqueeze(1)  # Bx1xHxdxNq
        keys = self.k_proj(k).reshape(b, per, nk, h, d).transpose(2, 3)  # BxPxHxNkxd
        attn = (keys.to(queries.dtype) @ queries * d**-0.5).softmax(3)  # BxPxHxNkxNq: softmax over the few keys
        values = self.v_proj(v).reshape(n, nk, h, d)
        if h * nk < self.internal_dim:
            return self._rows_product(attn.reshape(n, h * nk, nq), self._values_out(values), residual)
        out = attn.reshape(n, h, nk, nq).transpose(2, 3) @ values.transpose(1, 2).to(attn.dtype)  # (B*P)xHxNqxd
        out = self.out_proj(out.transpose(1, 2).reshape(n, nq, h * d).to(values.dtype))
        return _plus(residual, out if residual is None else out.to(residual.dtype))


def _linear_as(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``linear(x)`` in x's dtype (bf16 image tokens through fp32 weights: mixed inference)."""
    if x.dtype == linear.weight.dtype or torch.is_autocast_enabled(x.device.type):
        return linear(x)
    bias = None if linear.bias is None else linear.bias.to(x.dtype)
    return F.linear(x, linear.weight.to(x.dtype), bias)


def _gelu_(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU in place (inference only): no second image-sized buffer per activation."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return F.gelu(x)
    return torch.ops.aten.gelu_(x)


def _plus(residual: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    return out if residual is None else residual + out


@dataclass(frozen=True, eq=False)
class FirstLayerImage:
    """What the decoder's first layer needs of B images, for prompts that share one dense prompt embedding
    (the no-mask one): computed once per image, reused by every prompt decoded on it.

    ``tokens`` BxNxC: image embedding + dense embedding, token-major (N = h*w); ``t2i_keys`` BxHxdxN and
    ``t2i_values`` BxHxNxd: the token->image attention's key projection of tokens + PE and value projection
    of tokens, per head (H heads of d channels); ``i2t_queries`` BxHxdxN: the image->token attention's query
    projection of tokens + PE, per head. Each is laid out as the per-prompt products read it, so no decode
    copies an image-sized tensor into another layout."""

    tokens: torch.Tensor
    t2i_keys: torch.Tensor
    t2i_values: torch.Tensor
    i2t_queries: torch.Tensor


class TwoWayMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.relu(self.lin1(x)))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image cross-attention, MLP, image->token cross-attention."""

    def __init__(
        self, dim: int, heads: int, mlp_dim: int, downsample_rate: int, skip_first_layer_pe: bool
    ) -> None:
        super().__init__()
        self.self_attn = TokenAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = TokenAttention(dim, heads, downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = TwoWayMLP(dim, mlp_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = TokenAttention(dim, heads, downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def _token_self_attention(self, queries: torch.Tensor, query_pe: torch.Tensor) -> torch.Tensor:
        if self.skip_first_layer_pe:
            return self.norm1(self.self_attn(queries, queries, queries))
        q = queries + query_pe
        return self.norm1(queries + self.self_attn(q, q, queries))

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        queries = self._token_self_attention(queries, query_pe)
        k = keys + key_pe  # both cross-attentions below see the same image tokens
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(self.cross_attn_image_to_token(k, queries + query_pe, queries, residual=keys))
        return queries, keys

    def project_image(self, tokens: torch.Tensor, key_pe: torch.Tensor) -> FirstLayerImage:
        """Image tokens BxNxC (+ PE) -> what :meth:`forward_projected` needs of them."""
        k = tokens + key_pe
        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        return FirstLayerImage(tokens, t2i.per_head(_linear_as(t2i.k_proj, k), channels_first=True),
                               t2i.per_head(_linear_as(t2i.v_proj, tokens), channels_first=False),
                               i2t.per_head(_linear_as(i2t.q_proj, k), channels_first=True))

    def forward_projected(self, queries: torch.Tensor, query_pe: torch.Tensor, image: FirstLayerImage,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` with the image side projected beforehand (:meth:`project_image`, B images) and
        shared by the P = (B*P) / B prompts of each image in queries (B*P)xTxC: the token->image attention
        runs on all P*T tokens of an image at once (attention rows are independent); the image tokens come
        out per prompt, (B*P)xNxC."""
        queries = self._token_self_attention(queries, query_pe)
        b = image.tokens.shape[0]
        bp, t, c = queries.shape
        q = (queries + query_pe).reshape(b, -1, c)
        attn = self.cross_attn_token_to_image.to_projected(q, image.t2i_keys, image.t2i_values)
        queries = self.norm2(queries + attn.reshape(bp, t, c))
        queries = self.norm3(queries + self.mlp(queries))
        residual = image.tokens if b == 1 else torch.repeat_interleave(image.tokens, bp // b, 0)  # 1xNxC broadcasts
        keys = self.norm4(self.cross_attn_image_to_token.projected_queries(
            image.i2t_queries, queries + query_pe, queries, residual))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int, dim: int, heads: int, mlp_dim: int, downsample_rate: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, heads, mlp_dim, downsample_rate, skip_first_layer_pe=i == 0)
            for i in range(depth)
        )
        self.final_attn_token_to_image = TokenAttention(dim, heads, downsample_rate)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding BxCxhxw, image_pe (1|B)xCxhxw, point_embedding BxTxC -> (tokens BxTxC,
        image tokens Bx(hw)xC)."""
        tokens = _image_tokens(image_embedding)
        return self._layers(point_embedding, tokens, _image_tokens(image_pe, tokens.dtype), 0)

    def project_image(self, image_embedding: torch.Tensor, image_pe: torch.Tensor) -> FirstLayerImage:
        """B_img x C x h x w image embeddings (dense prompt embedding included) -> the first layer's view of
        them (:class:`FirstLayerImage`), for :meth:`forward_projected`."""
        tokens = _image_tokens(image_embedding)
        return self.layers[0].project_image(tokens, _image_tokens(image_pe, tokens.dtype))

    def forward_projected(self, image: FirstLayerImage, image_pe: torch.Tensor, point_embedding: torch.Tensor,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` for B = B_img x P prompts, P consecutive ones per image of ``image``; the same
        function as ``forward`` on each image's embedding repeated P times."""
        queries, keys = self.layers[0].forward_projected(point_embedding, point_embedding, image)
        return self._layers(point_embedding, keys, _image_tokens(image_pe, keys.dtype), 1, queries)

    def _layers(self, point_embedding: torch.Tensor, keys: torch.Tensor, key_pe: torch.Tensor, start: int,
                queries: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        queries = point_embedding if queries is None else queries
        for layer in self.layers[start:]:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


def _image_tokens(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """BxCxhxw -> Bx(h*w)xC (:func:`_token_major`); without autograd, in the dtype the image-sized products
    run in: autocast's (bf16) inside an autocast region, else ``dtype`` (the image tokens' own, for their
    positional encoding) when given. Every image-sized operand then has one dtype: a bf16 + fp32 sum of
    image tokens is a type-promoting pass ~10x slower than either alone (2.3 vs 0.15-0.28 ms for SAM
    ViT-B's 4096x256 tokens on a 2-core CPU), and its fp32 result is cast back for each product again.
    Training keeps autocast's own casts, so trained weights do not depend on this."""
    x = _token_major(x)
    if torch.is_grad_enabled():
        return x
    if torch.is_autocast_enabled(x.device.type):
        return x.to(torch.get_autocast_dtype(x.device.type))
    return x if dtype is None else x.to(dtype)


def _token_major(x: torch.Tensor) -> torch.Tensor:
    """BxCxhxw -> Bx(h*w)xC, contiguous: every image-token op then reads memory in order. One copy for a
    standard (channels-first) tensor, none for a channels-last one (such as the dense positional encoding):
    flattening h, w first would copy a channels-last tensor twice."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1]).contiguous()


class MaskDecoder(nn.Module):
    """Predicts masks and their IoU from image embeddings and prompt embeddings."""

    def __init__(self, transformer_dim: int, cfg: MaskDecoderConfig) -> None:
        super().__init__()
        d = transformer_dim
        self.transformer = TwoWayTransformer(
            cfg.transformer_depth, d, cfg.transformer_heads, cfg.transformer_mlp_dim,
            cfg.attention_downsample_rate,
        )
        self.num_multimask_outputs = cfg.num_multimask_outputs
        self.num_mask_tokens = cfg.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, d)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, d)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(d, d // 4, kernel_size=2, stride=2),
            LayerNorm2d(d // 4),
            nn.GELU(),
            nn.ConvTranspose2d(d // 4, d // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(d, d, d // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(d, cfg.iou_head_hidden_dim, self.num_mask_tokens, cfg.iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        image_cache: FirstLayerImage | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode masks.

        Args:
            image_embeddings: BxCxhxw; each image is shared by ``P = N / B`` consecutive prompts.
            image_pe: 1xCxhxw dense positional encoding.
            sparse_prompt_embeddings: NxTxC.
            dense_prompt_embeddings: NxCxhxw; one broadcast over the prompts (batch stride 0, as the prompt
                encoder's no-mask embedding is) is added to each image once, not to per-prompt copies.
            multimask_output: return the 3 multimask outputs instead of the single-mask output.
            image_cache: :meth:`project_image` of these image embeddings with this dense embedding, from an
                earlier call (optional): the first layer then starts from it.
        Returns:
            mask logits Nx(3|1)x4hx4w and IoU predictions Nx(3|1).
        """
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, image_cache, sl
        )

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        image_cache: FirstLayerImage | None = None,
        mask_tokens: slice = slice(None),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The outputs of the mask tokens ``mask_tokens`` selects (default all 1+K): NxMx4hx4w logits and NxM
        IoU predictions; without autograd the masks of the other tokens are never computed."""
        n = sparse_prompt_embeddings.shape[0]
        if n % image_embeddings.shape[0]:
            raise ValueError(
                f"{n} prompts cannot be split evenly over {image_embeddings.shape[0]} images"
            )
        tokens = self.decoder_tokens(sparse_prompt_embeddings)
        per_image = n // image_embeddings.shape[0]
        h, w = image_embeddings.shape[-2:]
        if image_cache is None and per_image > 1 and dense_prompt_embeddings.stride(0) == 0 \
                and self._may_share_images():
            # one dense embedding broadcast over the prompts (the prompt encoder's no-mask embedding): the
            # transformer's first layer sees each image once instead of per_image copies
            image_cache = self.project_image(image_embeddings, image_pe, dense_prompt_embeddings[:1])
        if image_cache is not None:
            hs, src = self.transformer.forward_projected(image_cache, image_pe, tokens)
        else:
            src = image_embeddings if per_image == 1 else torch.repeat_interleave(image_embeddings, per_image, 0)
            hs, src = self.transformer(src + dense_prompt_embeddings, image_pe, tokens)
        return self.output_masks(hs, src, h, w, mask_tokens)

    def decoder_tokens(self, sparse_prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """NxTxC prompt tokens -> Nx(1+K+T)xC: the IoU token and the K mask tokens, then the prompts."""
        n = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(n, -1, -1).to(sparse_prompt_embeddings.dtype)
        return torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)

    def output_masks(self, hs: torch.Tensor, src: torch.Tensor, h: int, w: int,
                     mask_tokens: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformer's outputs (tokens Nx(1+K+T)xC, image tokens Nx(h*w)xC) -> the mask logits
        NxMx4hx4w and IoU predictions NxM of the tokens ``mask_tokens`` selects."""
        n, c = hs.shape[0], src.shape[-1]
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        iou = self.iou_prediction_head(iou_token_out)[:, mask_tokens]
        if not torch.is_grad_enabled():  # only the selected tokens' masks
            mlps = list(enumerate(self.output_hypernetworks_mlps))[mask_tokens]
            hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in mlps], dim=1)
            return self._masks_channels_last(src, h, w, hyper_in), iou
        # training: every token's mask, so each hypernetwork MLP gets a (possibly zero) gradient as before
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(n, c, h, w))
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return masks[:, mask_tokens], iou

    def project_image(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                      dense_embedding: torch.Tensor) -> FirstLayerImage:
        """What the first layer needs of B images (image_embeddings BxCxhxw, image_pe 1xCxhxw) for prompts
        whose dense prompt embedding is ``dense_embedding`` (1xCxhxw or 1xCx1x1, e.g. the no-mask one):
        computed once per image, it serves every later decode of such prompts (``image_cache``)."""
        return self.transformer.project_image(image_embeddings + dense_embedding, image_pe)

    @staticmethod
    def _may_share_images() -> bool:
        """Inference in eager mode: training and traced / exported graphs keep one image copy per prompt."""
        return not (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())

    def _masks_channels_last(self, src: torch.Tensor, h: int, w: int, hyper_in: torch.Tensor) -> torch.Tensor:
        """Inference path of ``output_upscaling`` + hypernetwork product, the same function on token-major
        features: image tokens Bx(h*w)xC and hyper_in BxMxC/8 (M mask tokens) -> mask logits BxMx4hx4w.

        A 2x2 stride-2 transposed convolution writes each input pixel's 2x2 output block from that pixel
        alone, so each is one matmul into (di, dj, out-channel) columns; the LayerNorm and GELUs then act on
        contiguous channels, and only the final M-channel logits are re-interleaved into pixels."""
        up1, norm, _, up2, _ = self.output_upscaling
        b = src.shape[0]
        o1, o2 = up1.out_channels, up2.out_channels
        dt = src.dtype
        w1 = up1.weight.permute(0, 2, 3, 1).reshape(up1.in_channels, 4 * o1).to(dt)  # C x (di, dj, o1)
        w2 = up2.weight.permute(0, 2, 3, 1).reshape(o1, 4 * o2).to(dt)  # rows (.., di, dj), cols (ei, ej, o2)
        b1, b2 = up1.bias.repeat(4).to(dt), up2.bias.repeat(4).to(dt)
        hyper = hyper_in.to(dt)  # BxMx(C/8)
        k = hyper.shape[1]

        def rows(x: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:  # GxTxC, GxMx(C/8) -> GxMx16T
            g, t, c = x.shape
            x = torch.addmm(b1, x.reshape(g * t, c), w1).reshape(-1, o1)
            x = _gelu_(F.layer_norm(x, (o1,), norm.weight, norm.bias, norm.eps))
            x = _gelu_(torch.addmm(b2, x.to(dt), w2)).reshape(g, 16 * t, o2)
            return torch.bmm(hyper.to(x.dtype), x.transpose(1, 2))  # M output rows: ~3x faster than columns

        per = h * w
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            masks = rows(src, hyper)  # one step: an exported graph keeps its dynamic prompt batch
        else:
            chunk = _UPSCALE_CHUNK if dt == torch.float32 else _UPSCALE_CHUNK_16BIT
            tok = min(per, chunk)  # image tokens per step: in fp32 every intermediate stays in cache
            group = max(1, chunk // per)  # small grids: several prompts per step
            out = []
            for n in range(0, b, group):
                parts = [rows(src[n : n + group, s : s + tok], hyper[n : n + group]) for s in range(0, per, tok)]
                out.append(torch.cat(parts, 2) if len(parts) > 1 else parts[0])
            masks = torch.cat(out) if len(out) > 1 else out[0]  # BxMx(i, j, di, dj, ei, ej)
        # into pixels (row 4i + 2di + ei, column 4j + 2dj + ej) by one gather: ~7x faster than the 8-d permute
        # (in fp32: PyTorch's CPU gather of bf16 is ~3x slower than of fp32, more than the two small casts)
        pixels = masks.reshape(b * k, -1).float().index_select(1, _pixel_order(h, w, masks.device))
        return pixels.reshape(b, k, 4 * h, 4 * w).to(dt)


@functools.lru_cache(maxsize=8)
def _pixel_order(h: int, w: int, device: torch.device) -> torch.Tensor:
    """For each pixel of the 4hx4w mask in raster order, its index in the inference upscaling's
    (i, j, di, dj, ei, ej) layout: pixel row 4i + 2di + ei, column 4j + 2dj + ej."""
    order = torch.arange(16 * h * w, device=device).reshape(h, w, 2, 2, 2, 2)
    return order.permute(0, 2, 4, 1, 3, 5).reshape(-1)
