"""The training loss of one method for one student/teacher pair (:class:`DistillationCriterion`): the student's BCE
plus the method's weighted terms, the stages each model must return, and the terms' trainable connectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from l2d.losses.logits import bce_loss
from l2d.losses.registry import METHODS, TERMS, method_hparams, part_weights, resolve_function
from l2d.models import ModelOutput, stage_channels


@dataclass(frozen=True)
class TermInputs:
    """What a term sees besides the two outputs: the stage maps it asked for, and its own trainable modules.

    Attributes:
        student_stages: the student's maps of the stages :attr:`Term.stages` selected, in that order (and its
            pooled features last, as ``[B, F, 1, 1]``, when :attr:`Term.pooled`).
        teacher_stages: the teacher's, likewise.
        module: the term's connectors (what :attr:`Term.connectors` built), or None.
    """

    student_stages: tuple[torch.Tensor, ...] = ()
    teacher_stages: tuple[torch.Tensor, ...] = ()
    module: nn.Module | None = None


def _pooled_features(model: nn.Module) -> int:
    backbone = getattr(model, "backbone", model)
    return int(backbone.num_features)


class DistillationCriterion(nn.Module):
    """The training loss of one method for one student/teacher pair: ``BCE + sum_term lambda_term * L_term``.

    It tells the engine which backbone stages each model must return (:attr:`student_stages`,
    :attr:`teacher_stages`, to pass as ``model(images, stages=...)``) and owns the trainable modules of the
    method's terms (:attr:`connectors`, by term name): the engine optimizes them with the student, under the
    same DDP wrapper, and saves them in its checkpoints. A method without feature-level terms has no stages and
    no parameters.

    Args:
        method: a key of :data:`METHODS`.
        hparams: overrides of the method's defaults (see :func:`method_hparams`).
        student / teacher: the two models; needed only by methods with feature-level terms (to read the
            channels of their stages).
    """

    def __init__(
        self,
        method: str,
        hparams: Mapping[str, float] | None = None,
        student: nn.Module | None = None,
        teacher: nn.Module | None = None,
    ):
        super().__init__()

        self.method = method
        self.hparams = method_hparams(method, hparams)
        self.weights = part_weights(method, self.hparams)
        self.needs_teacher = METHODS[method].needs_teacher
        self.connectors = nn.ModuleDict()
        self._functions: dict[str, Callable] = {}
        self._term_stages: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        for name in METHODS[method].terms:
            term = TERMS[name]
            self._functions[name] = resolve_function(term.fn)
            if term.stages is None:
                continue
            if student is None or teacher is None:
                raise ValueError(
                    f"method {method!r} compares backbone stages: its criterion needs the student and "
                    f"the teacher models"
                )
            student_channels, teacher_channels = stage_channels(student), stage_channels(teacher)
            selected = (term.stages(len(student_channels)), term.stages(len(teacher_channels)))
            self._term_stages[name] = selected
            if term.connectors is not None:
                pooled = ([_pooled_features(student)], [_pooled_features(teacher)]) if term.pooled else ([], [])
                self.connectors[name] = resolve_function(term.connectors)(
                    [student_channels[i] for i in selected[0]] + pooled[0],
                    [teacher_channels[i] for i in selected[1]] + pooled[1],
                    self.hparams,
                )
        self.student_stages = tuple(sorted({i for s, _ in self._term_stages.values() for i in s}))
        self.teacher_stages = tuple(sorted({i for _, t in self._term_stages.values() for i in t}))

    def _inputs(self, name: str, student: ModelOutput, teacher: ModelOutput | None) -> TermInputs:
        if name not in self._term_stages:
            return TermInputs(module=self.connectors[name] if name in self.connectors else None)
        student_indices, teacher_indices = self._term_stages[name]
        student_maps = dict(zip(self.student_stages, student.stages))
        teacher_maps = dict(zip(self.teacher_stages, teacher.stages))
        if len(student_maps) != len(self.student_stages) or len(teacher_maps) != len(self.teacher_stages):
            raise ValueError(
                f"method {self.method!r} needs stages {self.student_stages} of the student and "
                f"{self.teacher_stages} of the teacher; call the models with stages=..."
            )
        student_stages = tuple(student_maps[i] for i in student_indices)
        teacher_stages = tuple(teacher_maps[i] for i in teacher_indices)
        if TERMS[name].pooled:
            student_stages += (student.features[:, :, None, None],)
            teacher_stages += (teacher.features[:, :, None, None],)
        return TermInputs(student_stages, teacher_stages, self.connectors[name] if name in self.connectors else None)

    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, targets: torch.Tensor, live: dict | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, parts)``; ``parts`` maps ``bce`` and each loss to its unweighted, detached value. ``live``, when
        given, is filled with each part's weighted value, still differentiable (what the engine's gradient
        diagnostics take apart)."""
        if self.needs_teacher and teacher is None:
            raise ValueError(f"method {self.method!r} needs a teacher's output")
        total = bce_loss(student.logits, targets)
        parts = {"bce": total.detach()}
        if live is not None:
            live["bce"] = total
        for name in METHODS[self.method].terms:
            values = self._functions[name](
                student, teacher, targets, self.hparams, self._inputs(name, student, teacher)
            )
            for part, value in values.items():
                weighted = self.weights[part] * value
                total = total + weighted
                parts[part] = value.detach()
                if live is not None:
                    live[part] = weighted
        return total, parts


def distillation_loss(
    method: str,
    student: ModelOutput,
    teacher: ModelOutput | None,
    targets: torch.Tensor,
    hparams: Mapping[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss of ``method``: ``BCE + sum_term lambda_term * L_term`` (a :class:`DistillationCriterion`
    built for this call; methods with trainable connectors need one built with the models instead).

    Args:
        method: a key of :data:`METHODS`.
        student: the student's output (with gradients).
        teacher: the teacher's output (detached here); may be None for ``bce``.
        targets: ``[B, C]`` in {0, 1}.
        hparams: overrides of the method's defaults (see :func:`method_hparams`).

    Returns:
        ``(total, parts)`` where ``parts`` maps ``"bce"`` and each loss (``mld``, ``cd``, ``id``, ``kd``...) to its
        unweighted, detached value.
    """
    return DistillationCriterion(method, hparams)(student, teacher, targets)
