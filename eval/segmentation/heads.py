"""Segmentation heads on frozen token maps."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BNLinearHead(nn.Module):
    """DINOv2's ``BNHead``: feature maps resized to the first map's grid and concatenated -> BatchNorm -> 1x1 conv.

    ``forward(maps)`` takes a list of ``[B, D_i, h, w]`` maps and returns logits ``[B, C, h, w]`` on the token
    grid (upsample them to the label size).
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)

    def forward(self, maps) -> torch.Tensor:
        size = maps[0].shape[-2:]
        x = torch.cat([m if m.shape[-2:] == size else
                       F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps], dim=1)
        return self.conv(self.bn(x.float()))
