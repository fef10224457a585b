"""A split's images, whatever holds them: local files, ``s3://`` / ``gs://`` objects (fetched once per node into the
cache), or bytes embedded in a table. Torch-free; :class:`l2d.data.formats.ImageListDataset` decodes them.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from l2d.storage import Location, cache_dir

__all__ = ["DecodedStore", "Images"]


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


class DecodedStore:
    """A split's images decoded and resized once per node: one uint8 ``[N, 3, S, S]`` array memory-mapped from
    ``<cache>/decoded/<key>.u8`` (a sparse file: it takes disk as images are written), and a byte per image saying
    it is there (``<key>.filled``). Every loader of the node (several trials, their workers) shares it: the first to
    need an image decodes it and writes it, the others read it. Two writers of one image write the same bytes; the
    flag is set after them. The key is the images' identities (resolved path, URI or embedded bytes' digest), their
    sizes and modification times, and the side: another dataset, a changed file or another size is another store.
    """

    VERSION = 1

    def __init__(self, images: Images, side: int):
        self.side = side
        digest = hashlib.sha256(f"decoded-v{self.VERSION}:{side}\n".encode())
        identities = images.identities()
        sizes = images.sizes if images.sizes is not None else [None] * len(identities)
        for ref, size in zip(identities, np.asarray(sizes, dtype=object).tolist()):
            stamp = ""
            if not ref.startswith("sha256:") and "://" not in ref:
                try:
                    stat = os.stat(ref)
                    size, stamp = stat.st_size, str(stat.st_mtime_ns)
                except OSError:
                    stamp = "missing"
            digest.update(f"{ref}\0{size}\0{stamp}\n".encode())
        self.key = digest.hexdigest()[:32]
        folder = cache_dir() / "decoded"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{self.key}.u8"
        self._open((len(identities), 3, side, side))

    def _open(self, shape: tuple[int, ...]) -> None:
        self.pixels, resized = self._map(self.path, shape)
        self.filled, _ = self._map(self.path.with_suffix(".filled"), shape[:1])
        if resized:  # a pixels file of another size (damaged, cut short): nothing in it is trusted
            self.filled[:] = 0

    @staticmethod
    def _map(path, shape: tuple[int, ...]) -> tuple[np.memmap, bool]:
        """``path`` as a uint8 memmap of ``shape``, created (sparse, zeros) or grown to it by whoever comes first;
        and whether it had to be (re)sized."""
        size = int(np.prod(shape))
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            resized = os.fstat(fd).st_size != size
            if resized:  # new, or another size: (re)sized; zeros say "absent"
                os.ftruncate(fd, size)
        finally:
            os.close(fd)
        return np.memmap(path, dtype=np.uint8, mode="r+", shape=shape), resized

    def get(self, index: int, decode) -> np.ndarray:
        """Image ``index`` as uint8 ``[3, S, S]``: from the store, or ``decode(index)`` written into it first."""
        if not self.filled[index]:
            self.pixels[index] = decode(index)
            self.filled[index] = 1
        return np.array(self.pixels[index])

    def count(self) -> int:
        """How many images are in the store."""
        return int(np.count_nonzero(self.filled))

    def __getstate__(self) -> dict:  # loader workers and Ray pickle datasets: the maps are opened again there
        return {"path": str(self.path), "side": self.side, "key": self.key, "shape": self.pixels.shape}

    def __setstate__(self, state: dict) -> None:
        self.side, self.key = state["side"], state["key"]
        self.path = Path(state["path"])
        self._open(tuple(state["shape"]))
