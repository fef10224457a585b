"""Feature-level baselines: they compare intermediate backbone stages through trainable connectors (FitNets'
hint, ReviewKD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from l2d.losses._common import no_autocast


class HintConnector(nn.Module):
    """FitNets' regressor: a 1x1 convolution + BatchNorm from the student's stage channels to the teacher's."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
        self.norm = nn.BatchNorm2d(teacher_channels)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(feature_map))


def hint_loss(student_map: torch.Tensor, teacher_map: torch.Tensor, connector: nn.Module) -> torch.Tensor:
    """FitNet-style hint: ``mean((connector(F_S) - F_T)^2)`` over all elements of the teacher's stage map.

    When the two maps differ in spatial size (backbones of different strides), the larger is average-pooled to
    the smaller's size first.
    """
    projected = connector(student_map)
    with no_autocast(projected.device):
        projected, target = projected.float(), teacher_map.detach().float()
        size = (min(projected.shape[-2], target.shape[-2]), min(projected.shape[-1], target.shape[-1]))
        if projected.shape[-2:] != size:
            projected = F.adaptive_avg_pool2d(projected, size)
        if target.shape[-2:] != size:
            target = F.adaptive_avg_pool2d(target, size)
        return F.mse_loss(projected, target)


class AttentionFusion(nn.Module):
    """ReviewKD's attention-based fusion (ABF, Chen et al. 2021): a student feature reduced to ``mid`` channels and,
    but for the deepest, fused with the residual from the deeper level (upsampled) through two attention maps; the
    result mapped to the teacher's channels. Returns ``(output, residual for the next, shallower level)``."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.output = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.output[0].weight, a=1)

    def forward(self, feature: torch.Tensor, residual: torch.Tensor | None = None):
        reduced = self.reduce(feature)
        if self.attention is not None:
            residual = F.interpolate(residual, size=reduced.shape[-2:], mode="nearest")
            maps = self.attention(torch.cat([reduced, residual], dim=1))
            reduced = reduced * maps[:, :1] + residual * maps[:, 1:]
        return self.output(reduced), reduced


class ReviewConnector(nn.Module):
    """ReviewKD's review path over the student's features (shallow to deep, the pooled features last, as 1 x 1
    maps): from the deepest, each :class:`AttentionFusion` passes its residual to the next shallower one."""

    def __init__(self, student_channels: list[int], teacher_channels: list[int], mid_channels: int = 256):
        super().__init__()
        count = len(student_channels)
        self.fusions = nn.ModuleList(
            AttentionFusion(s, mid_channels, t, fuse=i < count - 1)
            for i, (s, t) in enumerate(zip(student_channels, teacher_channels))
        )

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs: list[torch.Tensor] = [None] * len(features)  # type: ignore[list-item]
        residual = None
        for index in range(len(features) - 1, -1, -1):
            outputs[index], residual = self.fusions[index](features[index], residual)
        return outputs


def hcl_loss(student_features: list[torch.Tensor], teacher_features: list[torch.Tensor]) -> torch.Tensor:
    """ReviewKD's hierarchical context loss, summed over feature pairs: for each, the MSE of the maps plus the MSEs of
    their 4 x 4, 2 x 2 and 1 x 1 average pools (only pools smaller than the map), weighted 1, 1/2, 1/4, 1/8 and
    normalized by the weights used. A pair of different sizes is compared at the smaller one."""
    total = None
    with no_autocast(student_features[0].device):
        for student, teacher in zip(student_features, teacher_features):
            student, teacher = student.float(), teacher.detach().float()
            size = (min(student.shape[-2], teacher.shape[-2]), min(student.shape[-1], teacher.shape[-1]))
            if student.shape[-2:] != size:
                student = F.adaptive_avg_pool2d(student, size)
            if teacher.shape[-2:] != size:
                teacher = F.adaptive_avg_pool2d(teacher, size)
            loss, weight, normalizer = F.mse_loss(student, teacher), 1.0, 1.0
            for level in (4, 2, 1):
                if level >= size[0]:
                    continue
                weight /= 2.0
                loss = loss + weight * F.mse_loss(
                    F.adaptive_avg_pool2d(student, level), F.adaptive_avg_pool2d(teacher, level)
                )
                normalizer += weight
            total = loss / normalizer if total is None else total + loss / normalizer
    return total


# --- terms and their connectors (registered in l2d.losses.registry) ----------------------------------------------


def hint_term(student, teacher, targets, hparams, inputs):
    return {"hint": hint_loss(inputs.student_stages[0], inputs.teacher_stages[0], inputs.module)}


def hint_connectors(student: list[int], teacher: list[int], hparams) -> nn.Module:
    return HintConnector(student[0], teacher[0])


def reviewkd_term(student, teacher, targets, hparams, inputs):
    count = min(len(inputs.student_stages), len(inputs.teacher_stages))
    reviewed = inputs.module(list(inputs.student_stages[-count:]))
    return {"reviewkd": hcl_loss(reviewed, list(inputs.teacher_stages[-count:]))}


def review_connectors(student: list[int], teacher: list[int], hparams) -> nn.Module:
    count = min(len(student), len(teacher))  # the deepest levels of each, paired
    return ReviewConnector(student[-count:], teacher[-count:])
