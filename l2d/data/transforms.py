"""Image transforms: the official recipe's train-time augmentation (Cutout + RandAugment) and plain resizing.

Images are uint8 ``[3, H, W]`` tensors until the end, where they become float32 in [0, 1] (the official
L2D/ML-Decoder recipe does not normalize).
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2


class Cutout(torch.nn.Module):
    """Fill one random square (side ``size_fraction`` of the image) with a random colour.

    Follows the official recipe's CutoutPIL: the square is centred anywhere in the image and clipped at the
    borders.
    """

    def __init__(self, size_fraction: float = 0.5):
        super().__init__()
        self.size_fraction = size_fraction

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        _, height, width = image.shape
        half_h, half_w = int(height * self.size_fraction) // 2, int(width * self.size_fraction) // 2
        y, x = int(torch.randint(height, ())), int(torch.randint(width, ()))
        top, bottom = max(0, y - half_h), min(height, y + half_h)
        left, right = max(0, x - half_w), min(width, x + half_w)
        image = image.clone()
        colour = torch.randint(0, 256, (image.shape[0], 1, 1), dtype=torch.uint8)
        image[:, top:bottom, left:right] = colour.to(image.dtype)
        return image


def build_transform(image_size: int, train: bool) -> v2.Compose:
    """``train``: resize + Cutout + RandAugment; else resize. Input: uint8 ``[3, H, W]``; output float [0, 1]."""
    steps: list[torch.nn.Module] = [v2.Resize((image_size, image_size), antialias=True)]
    if train:
        steps += [Cutout(0.5), v2.RandAugment()]
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)
