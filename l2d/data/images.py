"""A split's images, whatever holds them: local files, ``s3://`` / ``gs://`` objects (fetched once per node into the
cache), or bytes embedded in a table. Torch-free; :class:`l2d.data.formats.ImageListDataset` decodes them.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from l2d.storage import Location, cache_dir

__all__ = ["Images"]


@dataclass
class Images:
    """A split's images: for each row an absolute path or URI (``refs``), or embedded bytes (``blobs``), in pyarrow
    arrays (compact: a million paths take tens of MB, not a Python list's hundreds).

    Attributes:
        refs: string array, null where the row's bytes are embedded.
        blobs: binary array, or None when no row embeds its bytes.
        sizes: bytes of each image (from the folder listing, or the embedded bytes): part of the fingerprint; None
            for local files not listed yet (read when the fingerprint is asked for).
        versions: for remote images, the object's size and modification time (the cache key); else empty.
    """

    refs: pa.Array
    blobs: pa.Array | None
    sizes: np.ndarray | None
    versions: pa.Array | None = None
    # identities() once computed (embedded bytes are hashed once: by the overlap check, then kept for the fingerprint)
    _identities: list[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.refs)

    def take(self, rows: np.ndarray) -> Images:
        index = pa.array(rows, type=pa.int64())
        taken = Images(
            self.refs.take(index),
            None if self.blobs is None else self.blobs.take(index),
            None if self.sizes is None else self.sizes[rows],
            None if self.versions is None else self.versions.take(index),
        )
        if self._identities is not None:
            taken._identities = [self._identities[row] for row in np.asarray(rows).tolist()]
        return taken

    def name(self, row: int) -> str:
        ref = self.refs[row].as_py()
        return ref if ref is not None else f"<embedded bytes of row {row + 1}>"

    def identities(self) -> list[str]:
        """What makes two rows the same image: the resolved path or URI, or a digest of the embedded bytes."""
        if self._identities is None:
            refs = self.refs.to_pylist()
            blobs = self.blobs
            self._identities = (
                refs
                if blobs is None
                else [
                    ref if ref is not None else "sha256:" + hashlib.sha256(blobs[i].as_buffer()).hexdigest()
                    for i, ref in enumerate(refs)
                ]
            )
        return self._identities

    def update(self, digest) -> None:
        """Feed ``digest`` each image's file name and size (not its folder: a copy elsewhere has the same
        fingerprint), one ``name\\0size\\n`` line per image."""
        names = self.identities()
        sizes = self.sizes if self.sizes is not None else [os.path.getsize(name) for name in names]
        for ref, size in zip(names, np.asarray(sizes).tolist()):
            digest.update(f"{ref.split('?', 1)[0].rsplit('/', 1)[-1]}\0{size}\n".encode())

    @classmethod
    def local(cls, paths: list[str]) -> Images:
        """Local files (their sizes read when the fingerprint is first asked for)."""
        return cls(pa.array(paths, type=pa.string()), None, None)

    def read(self, row: int) -> bytes | str:
        """The row's image: its bytes, or a local path to open (a remote image is fetched into the cache first)."""
        ref = self.refs[row].as_py()
        if ref is None:
            return self.blobs[row].as_py()
        if "://" not in ref:
            return ref
        return _cached(ref, self.versions[row].as_py() if self.versions is not None else "")


_CACHE_LOCK = threading.Lock()


def _cached(uri: str, version: str) -> str:
    """A local copy of the remote image ``uri`` under ``<cache>/images``, keyed by the URI and the object's size and
    time (so a replaced object is fetched again); written to a temporary name and renamed, so that concurrent loaders
    on a node never read half a file."""
    key = hashlib.sha256(f"{uri}\0{version}".encode()).hexdigest()
    suffix = os.path.splitext(uri.split("?", 1)[0])[1][:8]
    path = cache_dir() / "images" / key[:2] / f"{key}{suffix}"
    if path.is_file():
        return str(path)
    data = Location.parse(uri, "image").read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _CACHE_LOCK:
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)
    return str(path)
