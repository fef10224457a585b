"""l2d: multi-label knowledge distillation (L2D and baselines) on timm backbones. Pure PyTorch; never imports Ray."""

__version__ = "0.1.0"
