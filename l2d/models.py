"""Multi-label models: a timm backbone + the label-wise embedding encoder g + the per-class classifier h.

The head follows the L2D paper and its official code (an ML-Decoder-style decoder layer): the last-stage
feature map of the backbone becomes a set of tokens, C frozen class queries cross-attend to them, and
each query comes out as the label-wise embedding ``E_k`` of class k. The classifier is per class:
``logit_k = <E_k, w_k> + b_k``.
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

import timm
import torch
from torch import nn

from l2d import weights as weight_sources
from l2d.backbones import UnknownModelError, check_backbone_name  # noqa: F401 - part of this module's interface
from l2d.weights import WeightsError, read_state_dict

logger = logging.getLogger(__name__)

#: Keys under which checkpoints commonly nest their state dict.
_STATE_DICT_KEYS = ("model", "state_dict", "model_state", "student")
#: Prefixes of the original classifier of a timm/torchvision model; our head replaces it.
_CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.", "last_linear.", "head.fc.")


class ModelOutput(NamedTuple):
    """What every model of this project returns (a NamedTuple, so DDP can walk it).

    Attributes:
        logits: ``[B, C]`` raw scores, one per label (apply a sigmoid for probabilities).
        label_embeddings: ``[B, C, D]`` the label-wise embeddings ``E`` from the encoder g.
        features: ``[B, F]`` the globally pooled backbone features (for RKD, PKT and other feature baselines).
        stages: the intermediate feature maps asked for with ``model(images, stages=(i, j, ...))`` (indices in
            ascending order), each ``[B, C_i, H_i, W_i]`` (NCHW whatever the backbone's own layout); empty by
            default. Stage ``i`` is the backbone's ``feature_info[i]`` (see :func:`stage_channels`).
    """

    logits: torch.Tensor
    label_embeddings: torch.Tensor
    features: torch.Tensor
    stages: tuple[torch.Tensor, ...] = ()

    def map(self, function) -> "ModelOutput":
        """``function`` applied to every tensor (``output.map(torch.clone)`` gives ordinary tensors from
        inference-mode ones; ``output.map(lambda t: t.detach().requires_grad_())`` gives leaves)."""
        return ModelOutput(
            function(self.logits),
            function(self.label_embeddings),
            function(self.features),
            tuple(function(t) for t in self.stages),
        )


class DecoderLayer(nn.Module):
    """One ML-Decoder layer: no self-attention, cross-attention over the image tokens, then an FFN.

    As in ML-Decoder, the self-attention block is replaced by ``q = LayerNorm(q + dropout(q))``, which keeps
    the parameter layout of a standard decoder layer while dropping its quadratic cost in C.
    """

    def __init__(self, embed_dim: int, num_heads: int = 8, ffn_dim: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.norm_query = nn.LayerNorm(embed_dim)
        self.dropout_query = nn.Dropout(dropout)
        self.cross_attention = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout, batch_first=True)
        self.dropout_attention = nn.Dropout(dropout)
        self.norm_attention = nn.LayerNorm(embed_dim)
        self.ffn = nn.Sequential(
            nn.Linear(embed_dim, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ffn_dim, embed_dim)
        )
        self.dropout_ffn = nn.Dropout(dropout)
        self.norm_ffn = nn.LayerNorm(embed_dim)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        queries = self.norm_query(queries + self.dropout_query(queries))
        attended = self.cross_attention(queries, tokens, tokens, need_weights=False)[0]
        queries = self.norm_attention(queries + self.dropout_attention(attended))
        return self.norm_ffn(queries + self.dropout_ffn(self.ffn(queries)))


class LabelWiseHead(nn.Module):
    """The label-wise embedding encoder g and the per-class classifier h.

    Args:
        in_features: channels of the backbone's last-stage tokens.
        num_classes: C, the number of labels.
        embed_dim: D, the size of each label-wise embedding.
        num_heads: attention heads of the cross-attention.
        ffn_dim: hidden size of the decoder's feed-forward block.
        dropout: dropout inside the decoder layer.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        embed_dim: int = 768,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.token_projection = nn.Linear(in_features, embed_dim)
        # Learned-free class queries: N(0, 1) at init and frozen, as in ML-Decoder and the L2D code.
        self.class_queries = nn.Embedding(num_classes, embed_dim)
        self.class_queries.weight.requires_grad_(False)
        self.decoder = DecoderLayer(embed_dim, num_heads, ffn_dim, dropout)
        self.classifier_weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        self.classifier_bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.xavier_normal_(self.classifier_weight)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map ``[B, N, in_features]`` tokens to ``(logits [B, C], label_embeddings [B, C, D])``."""
        tokens = torch.relu(self.token_projection(tokens))
        queries = self.class_queries.weight.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        label_embeddings = self.decoder(queries, tokens)
        logits = (label_embeddings * self.classifier_weight).sum(-1) + self.classifier_bias
        return logits, label_embeddings


class InputNorm(nn.Module):
    """``(images - mean) / std`` per channel: the normalisation a backbone's initial weights expect, kept inside the
    model (so a checkpoint, an export and a traced graph all take images in [0, 1]).

    The identity (mean 0, std 1) unless weights that need one set it (:mod:`l2d.weights`). Its two buffers are in the
    state dict; a checkpoint written before they existed loads as the identity.
    """

    def __init__(self, mean: tuple[float, ...] = (0.0, 0.0, 0.0), std: tuple[float, ...] = (1.0, 1.0, 1.0)):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.active = self._differs(mean, std)  # a Python flag: no device sync in forward

    @staticmethod
    def _differs(mean, std) -> bool:
        return any(float(m) != 0.0 for m in mean) or any(float(s) != 1.0 for s in std)

    def set(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean.copy_(torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.std.copy_(torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.active = self._differs(mean, std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.active:  # bit-identical to no normalisation, and no extra work
            return images
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        for name in ("mean", "std"):  # a checkpoint from before the buffers existed: the identity
            if prefix + name not in state_dict:
                state_dict[prefix + name] = InputNorm().get_buffer(name)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self.active = self._differs(
            state_dict[prefix + "mean"].flatten().tolist(), state_dict[prefix + "std"].flatten().tolist()
        )


class MultiLabelModel(nn.Module):
    """A timm backbone without its classifier, followed by :class:`LabelWiseHead`; :class:`InputNorm` in front.

    With ``own_classifier`` (a teacher adopted from a plain timm classifier, :func:`adopt_checkpoint`) the backbone
    keeps its classifier and the logits are that classifier's; the head gives the label-wise embeddings only.
    """

    def __init__(
        self,
        backbone: nn.Module,
        backbone_name: str,
        num_classes: int,
        embed_dim: int = 768,
        own_classifier: bool = False,
    ):
        super().__init__()
        self.input_norm = InputNorm()
        self.backbone = backbone
        self.backbone_name = backbone_name
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.own_classifier = own_classifier
        self.head = LabelWiseHead(backbone.num_features, num_classes, embed_dim)
        # The side this model sees its images at (a teacher's own resolution, ``teacher_image_size``): a batch of
        # another size is resized to it before the input normalisation. None: as they come.
        self.input_size: int | None = None

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` at :attr:`input_size` (bilinear; antialiased when shrinking), then normalised."""
        side = self.input_size
        if side and tuple(images.shape[-2:]) != (side, side):
            shrink = side < max(images.shape[-2:])
            images = nn.functional.interpolate(
                images, size=(side, side), mode="bilinear", align_corners=False, antialias=shrink
            )
        return self.input_norm(images)

    def _tokens(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The last-stage map as ``[B, N, C]`` tokens, whatever layout the backbone uses."""
        if feature_map.ndim == 4:
            if getattr(self.backbone, "output_fmt", "NCHW") == "NHWC":  # Swin and other NHWC models
                return feature_map.flatten(1, 2)
            return feature_map.flatten(2).transpose(1, 2)
        if feature_map.ndim == 3:  # ViT-like: [B, prefix + patches, C]; keep the patch tokens
            prefix = getattr(self.backbone, "num_prefix_tokens", 0)
            return feature_map[:, prefix:] if feature_map.shape[1] > prefix else feature_map
        raise RuntimeError(f"{self.backbone_name}: unexpected feature map shape {tuple(feature_map.shape)}")

    def head_output(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The label-wise head's own ``(logits, embeddings)``, the backbone run without gradients (what fitting the
        head of an adopted teacher trains, :func:`l2d.run.fit_head`)."""
        with torch.no_grad():
            feature_map = self.backbone.forward_features(self._prepare(images))
        return self.head(self._tokens(feature_map))

    def forward(self, images: torch.Tensor, stages: tuple[int, ...] = ()) -> ModelOutput:
        """Logits, label-wise embeddings, pooled features, and the intermediate ``stages`` asked for.

        Stages come from timm's ``forward_intermediates`` (one pass; its final map is ``forward_features``'s), so
        a method that needs them costs no second forward.
        """
        intermediates: list[torch.Tensor] = []
        images = self._prepare(images)
        if stages:
            feature_map, intermediates = self.backbone.forward_intermediates(
                images, indices=list(stages), output_fmt="NCHW"
            )
        else:
            feature_map = self.backbone.forward_features(images)
        features = self.backbone.forward_head(feature_map, pre_logits=True)
        logits, label_embeddings = self.head(self._tokens(feature_map))
        if self.own_classifier:
            logits = self.backbone.forward_head(feature_map)
        return ModelOutput(logits, label_embeddings, features, tuple(intermediates))


def stage_channels(model: nn.Module) -> list[int]:
    """Channels of each backbone stage a method may ask for (timm's ``feature_info``), stage 0 first."""
    backbone = model.backbone if isinstance(model, MultiLabelModel) else model
    info = getattr(backbone, "feature_info", None)
    if not info:
        raise ValueError(f"{type(backbone).__name__} declares no feature stages (timm feature_info)")
    return [int(stage["num_chs"]) for stage in info]


def token_grid(backbone: str, image_size: int) -> tuple[int, ...]:
    """The shape of the token set the label-wise head of ``backbone`` sees at ``image_size``: ``(rows, columns)`` of a
    convolutional feature map, or ``(tokens,)`` of a transformer's patch tokens. One forward pass of a randomly
    initialised backbone on one blank image (nothing downloaded)."""
    check_backbone_name(backbone)
    net = timm.create_model(backbone, pretrained=False, num_classes=0).eval()
    with torch.no_grad():
        feature_map = net.forward_features(torch.zeros(1, 3, image_size, image_size))
    if feature_map.ndim == 4:
        nhwc = getattr(net, "output_fmt", "NCHW") == "NHWC"
        height, width = feature_map.shape[1:3] if nhwc else feature_map.shape[2:4]
        return int(height), int(width)
    prefix = getattr(net, "num_prefix_tokens", 0)
    return (int(feature_map.shape[1] - prefix if feature_map.shape[1] > prefix else feature_map.shape[1]),)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not) in ``model``."""
    return sum(p.numel() for p in model.parameters())


def build_model(
    backbone: str,
    num_classes: int,
    embed_dim: int = 768,
    pretrained: str | os.PathLike | None = None,
    weights: str | None = None,
    own_classifier: bool = False,
    **backbone_kwargs,
) -> MultiLabelModel:
    """Build a multi-label model: timm ``backbone`` + label-wise embedding head.

    Args:
        backbone: any timm model name (``timm.list_models()``).
        num_classes: C, the number of labels.
        embed_dim: D, the size of the label-wise embeddings (teacher and student must agree for CD/ID).
        pretrained: a local checkpoint (kept for callers of the first version; same as ``weights``).
        weights: initial weights (:mod:`l2d.weights`): a local file (a timm/torchvision state dict of the backbone,
            loaded timm's way with its classifier dropped, or a whole model saved by this project), ``timm``,
            ``timm:<tag>``, ``hf-hub:<org>/<repo>`` from the local Hugging Face cache, or ``offline`` (an installed
            weight package, which also sets the model's input normalisation). Nothing is downloaded; without weights
            (or ``random``) the backbone starts from timm's random initialisation.
        own_classifier: keep timm's classifier over ``num_classes`` (the logits are its; the structure of a teacher
            adopted from a plain timm classifier, :func:`adopt_checkpoint`). Random initialisation only.
        **backbone_kwargs: passed to ``timm.create_model`` (for example ``img_size=64`` for a ViT or Swin).

    Returns:
        The model; its forward returns a :class:`ModelOutput`.

    Raises:
        WeightsError: the weights cannot be found or read, or do not fit ``backbone``.
    """
    check_backbone_name(backbone)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if own_classifier:
        net = timm.create_model(backbone, pretrained=False, num_classes=num_classes, **backbone_kwargs)
        return MultiLabelModel(net, backbone, num_classes, embed_dim, own_classifier=True)
    source = weights if weights is not None else (os.fspath(pretrained) if pretrained is not None else None)
    if weight_sources.is_random(source):
        source = None
    if weight_sources.is_offline(source):
        net, entry = weight_sources.offline_model(backbone, source, num_classes=0, **backbone_kwargs)
        model = MultiLabelModel(net, backbone, num_classes, embed_dim)
        model.input_norm.set(entry.mean, entry.std)
        return model
    path = weight_sources.resolve(source, backbone) if source else None
    state = weight_sources.read_state_dict(path) if path is not None else None
    if path is not None and not _is_whole_model_or_wrapped(state):
        try:
            # timm's own loader: the classifier dropped (num_classes=0), checkpoint filters applied, strict shapes.
            net = timm.create_model(
                backbone, pretrained=True, pretrained_cfg_overlay=dict(file=path), num_classes=0, **backbone_kwargs
            )
        except RuntimeError as error:
            mismatch = next(
                (
                    line.strip()
                    for line in str(error).splitlines()
                    if "size mismatch" in line or "Missing key" in line or "Unexpected key" in line
                ),
                str(error).splitlines()[0],
            )
            raise weight_sources.WeightsError(
                f"{path}: weights do not fit {backbone} (tensors with the wrong shape "
                f"for {backbone}, or missing: {mismatch[:300]})"
            ) from None
        # timm loads non-strictly once it drops a classifier, so a file of another model would load nothing,
        # silently: every tensor of the backbone must be in the file.
        missing = [k for k in net.state_dict() if k not in state and not k.endswith("num_batches_tracked")]
        if missing:
            raise weight_sources.WeightsError(
                f"{path}: weights do not fit {backbone}: the file lacks {len(missing)} of "
                f"its {len(net.state_dict())} tensors (e.g. {', '.join(missing[:3])})"
            )
        return MultiLabelModel(net, backbone, num_classes, embed_dim)
    net = timm.create_model(backbone, pretrained=False, num_classes=0, **backbone_kwargs)
    model = MultiLabelModel(net, backbone, num_classes, embed_dim)
    if path is not None:
        load_pretrained(model, path)
    return model


def adopt_checkpoint(backbone: str, num_classes: int, embed_dim: int, path: str) -> MultiLabelModel:
    """A teacher used as it is, from a checkpoint trained elsewhere (nothing trained here).

    Either a whole model this project wrote (a student export, a teacher-store entry): loaded whole, its own head
    and input normalisation included. Or a plain timm classifier of ``backbone`` over the ``num_classes`` classes
    (safetensors, or a ``.pth`` state dict read with ``weights_only=True``): loaded into the timm model with its
    classifier kept (:class:`MultiLabelModel` with ``own_classifier``: the logits are its own), the input
    normalisation of timm's pretrained configuration for ``backbone`` (what timm's training scripts feed it), and a
    label-wise head still to fit (:func:`l2d.run.fit_head`).

    Raises:
        WeightsError: the file cannot be read, or does not fit: the first tensor that differs, with both shapes, or
            the tensors it lacks.
    """
    state = weight_sources.read_state_dict(path)
    if _is_whole_model_or_wrapped(state):
        try:
            state = _unwrap_state_dict(state, path)
        except ValueError as error:
            raise weight_sources.WeightsError(str(error)) from None
        if any(k.startswith("head.") for k in state) and any(k.startswith("backbone.") for k in state):
            model = MultiLabelModel(
                timm.create_model(backbone, pretrained=False, num_classes=0), backbone, num_classes, embed_dim
            )
            _load_checked(model, state, path, backbone)
            return model
    net = timm.create_model(backbone, pretrained=False, num_classes=num_classes)
    _load_checked(net, state, path, backbone)
    model = MultiLabelModel(net, backbone, num_classes, embed_dim, own_classifier=True)
    config = getattr(net, "pretrained_cfg", None) or {}
    if "mean" in config and "std" in config:
        model.input_norm.set(tuple(config["mean"]), tuple(config["std"]))
    return model


def _load_checked(module: nn.Module, state: dict, path: str, backbone: str) -> None:
    """``module.load_state_dict(state)``, strictly, with an error that names the first tensor that does not fit."""
    target = module.state_dict()
    for name, tensor in target.items():
        if name not in state:
            missing = [k for k in target if k not in state]
            raise WeightsError(
                f"{path}: does not fit {backbone}: it lacks {len(missing)} of its {len(target)} tensors "
                f"(first: {name}, shape {tuple(tensor.shape)})"
            )
        if tuple(state[name].shape) != tuple(tensor.shape):
            classifier = (getattr(module, "pretrained_cfg", None) or {}).get("classifier") or "\0"
            hint = (
                " (the classifier: a checkpoint over another number of classes?)" if name.startswith(classifier) else ""
            )
            raise WeightsError(
                f"{path}: does not fit {backbone} over these classes: tensor {name} is {tuple(state[name].shape)} "
                f"in the file, {tuple(tensor.shape)} in the model{hint}"
            )
    extra = [k for k in state if k not in target]
    if extra:
        raise WeightsError(
            f"{path}: does not fit {backbone}: {len(extra)} tensor(s) it does not have (first: {extra[0]})"
        )
    module.load_state_dict(state)


def _is_whole_model_or_wrapped(state: object) -> bool:
    """Whether a weights file's content is a whole model of ours, or a state dict nested or prefixed by a trainer,
    which :func:`load_pretrained` unwraps (a plain backbone state dict goes to timm's loader instead)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return True  # nested, or not a state dict at all: load_pretrained unwraps it or names the problem
    if any(key in state and isinstance(state[key], dict) for key in _STATE_DICT_KEYS):
        return True
    keys = [k for k in state if isinstance(k, str)]
    if any(k.startswith(("module.", "_orig_mod.")) for k in keys):
        return True
    return any(k.startswith("head.") for k in keys) and any(k.startswith("backbone.") for k in keys)


def _unwrap_state_dict(checkpoint: object, path: str) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, dict):
        for key in _STATE_DICT_KEYS:
            if key in checkpoint and isinstance(checkpoint[key], dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    # DDP and torch.compile wrap names; strip their prefixes.
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in checkpoint.items()}


def load_pretrained(model: MultiLabelModel, path: str | os.PathLike) -> None:
    """Load local weights into ``model``: a whole model of ours, or a backbone-only timm/torchvision dict.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a state dict, or its tensors do not fit the model.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights {path!r} not found (give a local file path)")
    state_dict = _unwrap_state_dict(read_state_dict(path), path)
    if any(k.startswith("head.") for k in state_dict) and any(k.startswith("backbone.") for k in state_dict):
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as error:
            raise ValueError(f"{path}: checkpoint does not match {model.backbone_name}: {error}") from error
        return
    target = model.backbone.state_dict()
    backbone_weights = {k: v for k, v in state_dict.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    mismatched = [k for k, v in backbone_weights.items() if k in target and target[k].shape != v.shape]
    if mismatched:
        raise ValueError(f"{path}: tensors with the wrong shape for {model.backbone_name}: {mismatched[:5]}")
    missing, unexpected = model.backbone.load_state_dict(backbone_weights, strict=False)
    if len(missing) == len(target):
        raise ValueError(f"{path}: no tensor matches the parameters of {model.backbone_name}")
    if missing or unexpected:
        logger.warning(
            "%s: loaded into %s with %d missing and %d unexpected keys (e.g. %s)",
            path,
            model.backbone_name,
            len(missing),
            len(unexpected),
            (missing + unexpected)[:3],
        )
