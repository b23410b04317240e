"""The encoder contract every backbone implements (see README, "The encoder contract").

Subclasses implement two hooks:

* ``_features(x, mask) -> dict`` for one image batch ``[B,3,H,W]`` and an optional bool mask ``[B, h*w]``;
  returns ``x_norm_clstoken [B,D]``, ``x_norm_regtokens [B,R,D]``, ``x_norm_patchtokens [B,N,D]``,
  ``x_prenorm`` and ``masks``.
* ``_intermediate(x, indices, norm) -> list[(patch [B,N,D], cls [B,D], (h, w))]`` for the block indices asked.

The base class adds list (multi-crop) input, mask validation, ``get_intermediate_layers`` with DINOv2's
signature, ``forward`` (logits or cls feature), the input-size check and layer ids for lr decay.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn

from ..layers.patch_embed import check_divisible

EMBEDDING_PARAM_NAMES = ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")


class Encoder(nn.Module):
    embed_dim: int
    patch_size: int
    num_register_tokens: int = 0
    num_classes: int = 0
    n_blocks: int = 0

    # --- hooks -------------------------------------------------------------------------------------
    def _features(self, x: torch.Tensor, mask: torch.Tensor | None) -> dict:
        raise NotImplementedError

    def _intermediate(self, x: torch.Tensor, indices: Sequence[int], norm: bool):
        raise NotImplementedError

    # --- shared behaviour --------------------------------------------------------------------------
    def token_grid(self, x: torch.Tensor) -> tuple[int, int]:
        """(h, w) of the output token grid for input ``x``; raises a clear error for bad sizes."""
        return check_divisible(x, self.patch_size, "patch_size")

    def _check_mask(self, x: torch.Tensor, mask):
        if mask is None:
            return None
        h, w = self.token_grid(x)
        if mask.dtype != torch.bool or mask.shape != (x.shape[0], h * w):
            raise ValueError(
                f"masks must be a bool tensor of shape [B, (H/p)*(W/p)] = [{x.shape[0]}, {h * w}] for input "
                f"{tuple(x.shape)} and patch_size={self.patch_size}; got {mask.dtype} {tuple(mask.shape)}"
            )
        return mask

    def forward_features(self, x, masks=None):
        if isinstance(x, (list, tuple)):
            if masks is None:
                masks = [None] * len(x)
            if not isinstance(masks, (list, tuple)) or len(masks) != len(x):
                raise ValueError("with list input, masks must be None or a list aligned with the inputs")
            return [self.forward_features(xi, mi) for xi, mi in zip(x, masks)]
        self.token_grid(x)
        return self._features(x, self._check_mask(x, masks))

    def _block_indices(self, n) -> list[int]:
        total = self.n_blocks
        if isinstance(n, int):
            if not 1 <= n <= total:
                raise ValueError(f"n={n} last blocks requested but the encoder has {total} blocks")
            return list(range(total - n, total))
        idx = [int(i) for i in n]
        bad = [i for i in idx if not 0 <= i < total]
        if bad:
            raise ValueError(f"block indices {bad} out of range for an encoder with {total} blocks")
        return idx

    def get_intermediate_layers(self, x, n=1, reshape: bool = False, return_class_token: bool = False,
                                norm: bool = True):
        """As DINOv2: outputs of the last ``n`` blocks (int) or of the listed blocks; optionally ``[B,D,h,w]``."""
        self.token_grid(x)
        outs = self._intermediate(x, self._block_indices(n), norm)
        result = []
        for patch, cls, (h, w) in outs:
            if reshape:
                patch = patch.reshape(patch.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
            result.append((patch, cls) if return_class_token else patch)
        return tuple(result)

    def forward(self, x, *args, is_training: bool = False, masks=None, **kwargs):
        feats = self.forward_features(x, masks)
        if is_training:
            return feats
        head = getattr(self, "head", None)
        cls = feats["x_norm_clstoken"]
        return head(cls) if head is not None else cls.clone()  # not a view of the token sequence

    @property
    def num_lr_layers(self) -> int:
        """Number of depth levels for layer-wise lr decay: ``layer_id`` lies in ``[0, num_lr_layers - 1]``.
        Default ``n_blocks + 2`` (embeddings, blocks, final norm/head); multi-stage encoders count all stages."""
        return self.__dict__.get("_num_lr_layers", self.n_blocks + 2)

    @num_lr_layers.setter
    def num_lr_layers(self, value: int):
        self.__dict__["_num_lr_layers"] = int(value)

    def layer_id(self, param_name: str) -> int:
        """Layer index for layer-wise lr decay: embeddings 0, ``blocks.i`` -> i+1, the rest n_blocks+1."""
        if param_name.startswith(EMBEDDING_PARAM_NAMES):
            return 0
        m = re.match(r"blocks\.(\d+)\.", param_name)
        if m:
            return int(m.group(1)) + 1
        return self.n_blocks + 1

    def no_weight_decay_names(self) -> set[str]:
        """Token/embedding parameters exempt from weight decay when ``no_wd_on_embeddings`` is asked for."""
        return {"pos_embed", "cls_token", "register_tokens", "mask_token"}
