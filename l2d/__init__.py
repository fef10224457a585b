"""l2d: multi-label knowledge distillation (L2D and baselines) on timm backbones. Pure PyTorch; never imports Ray.

Floors, bottom first; a module imports only from the floors below it (and, within a floor, from the modules listed
before it). ``tests/test_layers.py`` holds this, imports inside functions included.

- leaves: ``settings`` (a run's settings, each defined once), ``storage`` (every path and URI), ``backbones``
  (which timm models exist, from a cached index), ``weights`` (initial weights: files, timm's cache, offline
  packages), ``recipe`` (the optimization settings)
- models: ``models`` (timm backbone + label-wise head)
- method: ``losses.registry`` (torch-free: methods, terms, weights), the loss families, ``losses.criterion``
- data and metrics: ``metrics``, ``data.registry`` (torch-free: datasets and their options), readers (``images``:
  where a split's images are; ``formats``: the paper's layouts; ``manifest``: the declared formats), ``data``
- training: ``teacher_cache`` (the teacher's outputs of each view, computed once), ``engine`` (epochs, DDP, AMP,
  diagnostics), ``teachers`` (the content-keyed store), ``run`` (one typed run config: resolve, build, fit;
  ``train`` to a folder), ``export`` (a student taken home)
"""

__version__ = "0.1.0"

#: The layer map (see the docstring); ``tests/test_layers.py`` checks every import against it.
LAYERS = [
    ["l2d", "l2d.settings", "l2d.storage", "l2d.backbones", "l2d.weights", "l2d.recipe"],
    ["l2d.models"],
    [
        "l2d.losses.registry",
        "l2d.losses._common",
        "l2d.losses.logits",
        "l2d.losses.embedding",
        "l2d.losses.relational",
        "l2d.losses.feature",
        "l2d.losses.criterion",
        "l2d.losses",
    ],
    [
        "l2d.metrics",
        "l2d.data.registry",
        "l2d.data.transforms",
        "l2d.data.mosaic",
        "l2d.data.images",
        "l2d.data.formats",
        "l2d.data.manifest",
        "l2d.data",
    ],
    ["l2d.teacher_cache", "l2d.engine", "l2d.teachers", "l2d.run", "l2d.export"],
]
