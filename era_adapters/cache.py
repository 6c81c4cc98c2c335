"""A content-addressed, sharded, resumable embedding cache, and `embed_texts`, the one way to embed.
(Longer than most modules: storage, resume planning and the embed functions share the cache's
invariants — the shard plan is what makes a resumed run bit-identical.)

Layout, per encoder identity (see `TextEncoder.identity`), under ``<cache root>/embeddings/``::

    <model-slug>--<identity key>/
        identity.json                     what the vectors depend on (model id, revision/weights, ...)
        shards/<shard id>.<sha256[:12]>.npy   float32 (rows, dim) embeddings, plain .npy (memory-mappable)
        manifests/<shard id>.json         rows, dim, file name, sha256 and byte size of the .npy, and the
                                          blake2b-128 digest of each row's exact text, in row order

A text is found by the digest of its exact UTF-8 bytes (after any prompt was applied). Every file is
written under a temp name and renamed; a manifest is written only after its shard is complete, so the
index (the union of the manifests) never points at a partial shard. A shard whose size, checksum,
shape or dtype does not match its manifest is treated as absent: it is recomputed, never read.

Resume and bit-identity: the texts missing from the cache are sorted by a fixed rule (longest first by
characters, ties by digest) and cut into consecutive shards of `shard_size` texts; shard i goes to
process i % num_processes, and each shard is embedded by one `encode_texts` call (length-sorted
batches within it). After an interruption the missing texts are exactly the union of the unfinished
shards; sorted and cut again they give the same shards (all but the last are full), so every batch,
hence every vector, is the same as in an uninterrupted run, whatever the number of processes (given
the same shard size, batch size, device and thread settings).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from modeling_era.modeling_era import atomic_path, atomic_write

from .models import cache_root

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "CorruptShardError",
    "EmbedStats",
    "EmbeddingCache",
    "embed_documents",
    "embed_queries",
    "embed_texts",
    "ensure_embedded",
    "progress_bar",
    "text_digest",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_SHARD_SIZE = 1024
# A progress bar appears once an embedding call has run this long, whatever its number of texts
# (tqdm's `delay`), so quick calls stay quiet and slow ones (a few long documents with a big model) do not.
PROGRESS_DELAY_SECONDS = 3.0
_DIGEST_BYTES = 16
_DIGEST_DTYPE = f"S{_DIGEST_BYTES}"


class CorruptShardError(OSError):
    """A shard no longer matches its manifest (truncated, altered); run the extraction again."""


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def text_digest(text: str) -> bytes:
    """blake2b-128 of the exact text (UTF-8; lone surrogates kept): the cache key of one text."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=_DIGEST_BYTES).digest()


@dataclass(frozen=True)
class _Manifest:
    shard_id: str
    file: str
    rows: int
    dim: int
    sha256: str
    nbytes: int
    digests: tuple[bytes, ...]

    @classmethod
    def parse(cls, data: dict[str, Any]) -> _Manifest:
        if data.get("format") != FORMAT_VERSION or data.get("dtype") != "float32":
            raise ValueError(f"unknown manifest format {data.get('format')!r} / dtype {data.get('dtype')!r}")
        digests = tuple(bytes.fromhex(h) for h in data["text_blake2b"])
        manifest = cls(
            data["shard"], data["file"], int(data["rows"]), int(data["dim"]), data["sha256"], int(data["bytes"]), digests
        )
        if len(digests) != manifest.rows or any(len(d) != _DIGEST_BYTES for d in digests) or "/" in manifest.file:
            raise ValueError("inconsistent manifest")
        return manifest


@dataclass
class EmbedStats:
    """Hit/miss accounting of one `ensure_embedded` call (counts are over unique texts, all processes)."""

    requested: int = 0  # texts asked for, duplicates included
    unique: int = 0
    cached: int = 0  # found, valid, in the cache
    encoded: int = 0  # embedded by this call (by all processes together)
    encoded_here: int = 0  # ... by this process
    shards_written: int = 0  # by all processes together
    corrupt_shards: int = 0  # detected and dropped (their texts were re-encoded)
    seconds: float = 0.0
    processes: int = 1  # processes that shared the work

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EmbeddingCache:
    """The embeddings of one encoder identity: sharded `.npy` files plus per-shard manifests.

    Reads are memory-mapped: `get` returns the embeddings of a list of texts (in order) as one float32
    array, `iter_chunks` yields them chunk by chunk without ever holding the whole corpus, and
    `write_npy` streams them into one `.npy` file (memory-mappable, e.g. for `era_adapters.search`).
    """

    def __init__(self, directory: str | os.PathLike, identity: dict[str, Any] | None = None) -> None:
        self.directory = Path(directory)
        self.shards_dir = self.directory / "shards"
        self.manifests_dir = self.directory / "manifests"
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        self.manifests_dir.mkdir(parents=True, exist_ok=True)
        identity_file = self.directory / "identity.json"
        if identity is not None:
            if identity_file.is_file():
                stored = json.loads(identity_file.read_text(encoding="utf-8"))
                if stored != json.loads(json.dumps(identity)):
                    raise ValueError(
                        f"{self.directory} holds embeddings of another encoder ({stored}); expected {identity}. "
                        "Use EmbeddingCache.for_encoder(encoder) to get the right folder."
                    )
            else:
                atomic_write(identity_file, json.dumps(identity, indent=1, sort_keys=True).encode())
        elif identity_file.is_file():
            identity = json.loads(identity_file.read_text(encoding="utf-8"))
        self.identity = identity
        self.last_stats: EmbedStats | None = None
        self._parsed: dict[str, tuple[tuple[int, int], _Manifest | None]] = {}  # manifest name -> (stat, parsed)
        self._verified: dict[str, tuple[int, int]] = {}  # shard file -> (size, mtime) it was verified at
        self._mmaps: dict[str, np.ndarray] = {}
        self._excluded: set[str] = set()  # shard ids found corrupt since the last refresh
        self._bad: set[str] = set()  # shard ids whose manifest or file is unusable (from the last refresh)
        self._shards: list[_Manifest] = []
        self._keys = np.empty(0, dtype=_DIGEST_DTYPE)
        self._where = np.empty(0, dtype=np.int64)  # shard index << 32 | row, aligned with _keys
        self.refresh()

    @classmethod
    def for_encoder(cls, encoder: Any, cache_dir: str | os.PathLike | None = None) -> EmbeddingCache:
        """The cache folder of `encoder`'s identity under `cache_root(cache_dir)` (default: the encoder's)."""
        root = cache_root(cache_dir if cache_dir is not None else getattr(encoder, "cache_dir", None))
        return cls(root / "embeddings" / encoder.cache_name, encoder.identity)

    # ------------------------------------------------------------------ index

    def refresh(self) -> None:
        """Re-read the manifests (new shards written by other processes become visible; shards
        `exclude`d before are looked at afresh: by now they were removed or rewritten)."""
        self._excluded = set()
        manifests: list[_Manifest] = []
        bad: set[str] = set()
        seen: set[str] = set()
        for path in sorted(self.manifests_dir.glob("*.json")):
            seen.add(path.name)
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            stamp = (stat.st_size, stat.st_mtime_ns)
            cached = self._parsed.get(path.name)
            if cached is None or cached[0] != stamp:
                try:
                    parsed: _Manifest | None = _Manifest.parse(json.loads(path.read_text(encoding="utf-8")))
                except (OSError, ValueError, KeyError, TypeError) as error:
                    logger.warning("ignoring unreadable manifest %s (%s)", path, error)
                    parsed = None
                self._parsed[path.name] = (stamp, parsed)
            manifest = self._parsed[path.name][1]
            if manifest is None:
                bad.add(path.stem)
                continue
            try:
                size = (self.shards_dir / manifest.file).stat().st_size
            except FileNotFoundError:
                size = -1
            if size != manifest.nbytes:
                bad.add(manifest.shard_id)
            else:
                manifests.append(manifest)
        self._parsed = {name: value for name, value in self._parsed.items() if name in seen}
        self._bad = bad
        self._build(manifests)

    def _build(self, manifests: list[_Manifest]) -> None:
        self._shards = manifests
        live = {m.file for m in manifests}
        self._mmaps = {name: array for name, array in self._mmaps.items() if name in live}
        if not manifests:
            self._keys = np.empty(0, dtype=_DIGEST_DTYPE)
            self._where = np.empty(0, dtype=np.int64)
            return
        keys = np.frombuffer(b"".join(b"".join(m.digests) for m in manifests), dtype=_DIGEST_DTYPE)
        where = np.concatenate(
            [(np.int64(i) << 32) | np.arange(m.rows, dtype=np.int64) for i, m in enumerate(manifests)]
        )
        # A text in several shards (racing writers): the first shard in name order wins.
        keys, first = np.unique(keys, return_index=True)
        self._keys, self._where = keys, where[first]

    def _locate(self, digests: np.ndarray) -> np.ndarray:
        """shard index << 32 | row for each digest, -1 where absent."""
        if len(self._keys) == 0 or len(digests) == 0:
            return np.full(len(digests), -1, dtype=np.int64)
        pos = np.searchsorted(self._keys, digests)
        pos[pos == len(self._keys)] = 0
        found = self._keys[pos] == digests
        return np.where(found, self._where[pos], -1)

    @staticmethod
    def _digest_array(texts: Sequence[str]) -> np.ndarray:
        return np.frombuffer(b"".join(text_digest(t) for t in texts), dtype=_DIGEST_DTYPE)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def dim(self) -> int | None:
        return self._shards[0].dim if self._shards else None

    def contains(self, texts: Sequence[str]) -> np.ndarray:
        """Boolean mask: which texts have a (not yet verified) entry in the cache."""
        return self._locate(self._digest_array(list(texts))) >= 0

    # ------------------------------------------------------------------ integrity

    def verify(self, shard_indices: Any = None) -> set[str]:
        """Check size, sha256, shape and dtype of shards (all, or these indices into the index); return
        the ids of corrupt ones. Verified files are remembered by (size, mtime)."""
        indices = range(len(self._shards)) if shard_indices is None else sorted({int(i) for i in shard_indices})
        corrupt = set()
        for index in indices:
            manifest = self._shards[index]
            if not self._verify_one(manifest):
                corrupt.add(manifest.shard_id)
        return corrupt

    def _verify_one(self, manifest: _Manifest) -> bool:
        path = self.shards_dir / manifest.file
        try:
            stat = path.stat()
            stamp = (stat.st_size, stat.st_mtime_ns)
            if self._verified.get(manifest.file) == stamp:
                return True
            if stat.st_size != manifest.nbytes:
                raise ValueError(f"{stat.st_size} bytes, manifest says {manifest.nbytes}")
            with open(path, "rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
            if digest != manifest.sha256:
                raise ValueError("sha256 mismatch")
            array = np.load(path, mmap_mode="r")
            if array.dtype != np.float32 or array.shape != (manifest.rows, manifest.dim):
                raise ValueError(f"{array.dtype} {array.shape}, manifest says float32 {(manifest.rows, manifest.dim)}")
        except (OSError, ValueError) as error:
            logger.warning("shard %s is corrupt (%s); it will be recomputed", path.name, error)
            return False
        self._verified[manifest.file] = stamp
        return True

    def exclude(self, shard_ids: set[str]) -> None:
        """Stop using these shards (found corrupt) in this object's index, until the next `refresh`."""
        if shard_ids:
            self._excluded |= set(shard_ids)
            self._build([m for m in self._shards if m.shard_id not in self._excluded])

    def remove_shards(self, shard_ids: set[str]) -> None:
        """Delete the manifests (then the files) of these shards, if they still describe the same data."""
        for shard_id in shard_ids:
            manifest_path = self.manifests_dir / f"{shard_id}.json"
            stale = self._parsed.get(manifest_path.name, (None, None))[1]
            try:
                current = _Manifest.parse(json.loads(manifest_path.read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError, TypeError):
                current = None
            if current is not None and stale is not None and current != stale:
                continue  # rewritten meanwhile by someone else: not ours to delete
            manifest_path.unlink(missing_ok=True)
            if current is not None:
                (self.shards_dir / current.file).unlink(missing_ok=True)

    def bad_shards(self) -> set[str]:
        """Shards whose manifest is unreadable or whose file is missing or of the wrong size."""
        return set(self._bad)

    def prune(self, min_age_s: float = 3600.0) -> int:
        """Delete shard files no manifest points at and stale temp files older than `min_age_s`."""
        self.refresh()
        referenced = {m.file for _, m in self._parsed.values() if m is not None}
        removed = 0
        now = time.time()
        for folder in (self.shards_dir, self.manifests_dir):
            for path in folder.iterdir():
                orphan = folder == self.shards_dir and path.name not in referenced
                if (orphan or ".tmp-" in path.name) and now - path.stat().st_mtime > min_age_s:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed

    # ------------------------------------------------------------------ writing

    def write_shard(self, digests: Sequence[bytes], vectors: np.ndarray) -> str:
        """Store one shard (temp name + rename), then its manifest; return the shard id."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(digests) or len(digests) == 0:
            raise ValueError(f"a shard needs one vector per digest: {len(digests)} digests, vectors {vectors.shape}.")
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise ValueError(f"vectors of width {vectors.shape[1]} in a cache of width {self.dim}.")
        shard_id = hashlib.blake2b(b"".join(digests), digest_size=12).hexdigest()
        data = _npy_bytes(vectors)
        sha = hashlib.sha256(data).hexdigest()
        file = f"{shard_id}.{sha[:12]}.npy"
        atomic_write(self.shards_dir / file, data)
        manifest = {
            "format": FORMAT_VERSION,
            "shard": shard_id,
            "file": file,
            "rows": int(vectors.shape[0]),
            "dim": int(vectors.shape[1]),
            "dtype": "float32",
            "bytes": len(data),
            "sha256": sha,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "text_blake2b": [d.hex() for d in digests],
        }
        atomic_write(self.manifests_dir / f"{shard_id}.json", json.dumps(manifest).encode())
        return shard_id

    # ------------------------------------------------------------------ reading

    def _mmap(self, manifest: _Manifest) -> np.ndarray:
        array = self._mmaps.get(manifest.file)
        if array is None:
            if not self._verify_one(manifest):
                raise CorruptShardError(
                    f"shard {manifest.file} in {self.shards_dir} is corrupt; run the extraction (embed_texts) again "
                    "to recompute it."
                )
            array = self._mmaps[manifest.file] = np.load(self.shards_dir / manifest.file, mmap_mode="r")
        return array

    def _locate_all(self, texts: Sequence[str]) -> np.ndarray:
        where = self._locate(self._digest_array(texts))
        if (where < 0).any():
            self.refresh()
            where = self._locate(self._digest_array(texts))
        missing = int((where < 0).sum())
        if missing:
            first = next(i for i, w in enumerate(where) if w < 0)
            raise KeyError(
                f"{missing} of {len(texts)} texts are not in the cache {self.directory} (first: texts[{first}] = "
                f"{texts[first][:60]!r}); embed them first with embed_texts / ensure_embedded."
            )
        return where

    def _gather(self, where: np.ndarray) -> np.ndarray:
        dim = self.dim or 0
        out = np.empty((len(where), dim), dtype=np.float32)
        shard_of, row_of = where >> 32, where & 0xFFFFFFFF
        order = np.argsort(shard_of, kind="stable")
        bounds = np.flatnonzero(np.diff(shard_of[order])) + 1
        for group in np.split(order, bounds):
            if len(group):
                array = self._mmap(self._shards[int(shard_of[group[0]])])
                out[group] = array[row_of[group]]
        return out

    def get(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of these exact texts, in order: `(n, dim)` float32. KeyError if any is missing."""
        texts = list(texts)
        if not texts:
            return np.empty((0, self.dim or 0), dtype=np.float32)
        return self._gather(self._locate_all(texts))

    def iter_chunks(self, texts: Sequence[str], chunk_size: int = 65536) -> Iterator[np.ndarray]:
        """Yield the embeddings of `texts` in order, `chunk_size` rows at a time (bounded memory)."""
        texts = list(texts)
        where = self._locate_all(texts) if texts else np.empty(0, dtype=np.int64)
        for start in range(0, len(where), chunk_size):
            chunk = self._gather(where[start : start + chunk_size])
            self._mmaps.clear()  # unmap: the pages read so far leave this process's RSS
            yield chunk

    def write_npy(self, texts: Sequence[str], path: str | os.PathLike, chunk_size: int = 65536) -> np.ndarray:
        """Write the embeddings of `texts` (in order) to one `.npy` file, chunk by chunk; return it
        memory-mapped read-only (e.g. a corpus for `era_adapters.search.exact_search`)."""
        texts = list(texts)
        path = Path(path)
        where = self._locate_all(texts) if texts else np.empty(0, dtype=np.int64)
        if not texts:
            atomic_write(path, _npy_bytes(np.empty((0, self.dim or 0), dtype=np.float32)))
            return np.load(path)
        with atomic_path(path) as temporary:
            out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32, shape=(len(texts), self.dim or 0))
            for start in range(0, len(where), chunk_size):
                out[start : start + chunk_size] = self._gather(where[start : start + chunk_size])
                self._mmaps.clear()
            out.flush()
            del out
        return np.load(path, mmap_mode="r")


# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------


def _rank(accelerator: Any) -> tuple[int, int, bool]:
    if accelerator is None:
        return 0, 1, True
    return int(accelerator.process_index), int(accelerator.num_processes), bool(accelerator.is_main_process)


def _barrier(accelerator: Any) -> None:
    if accelerator is not None and accelerator.num_processes > 1:
        accelerator.wait_for_everyone()


def ensure_embedded(
    encoder: Any,
    texts: Sequence[str],
    cache: EmbeddingCache | None = None,
    *,
    accelerator: Any = None,
    batch_size: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> EmbedStats:
    """Make sure every text (exact text, no prompt added) is in `encoder`'s cache; encode only the
    missing ones, in deterministic shards spread over the `accelerator`'s processes. Every process
    must call it with the same texts. Returns the hit/miss accounting (also `cache.last_stats`)."""
    started = time.perf_counter()
    rank, world, is_main = _rank(accelerator)
    if accelerator is not None and getattr(encoder, "device", None) != accelerator.device:
        encoder.to(accelerator.device)
    cache = cache if cache is not None else EmbeddingCache.for_encoder(encoder, cache_dir)
    if cache.identity is not None and cache.identity != encoder.identity:
        raise ValueError(f"the cache {cache.directory} belongs to {cache.identity}, not to {encoder.identity}.")
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}.")
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not a single string.")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, not a string.")
    digests = [text_digest(t) for t in texts]
    first: dict[bytes, int] = {}
    for i, digest in enumerate(digests):
        first.setdefault(digest, i)
    unique = list(first)

    cache.refresh()
    where = cache._locate(np.frombuffer(b"".join(unique), dtype=_DIGEST_DTYPE) if unique else np.empty(0, _DIGEST_DTYPE))
    corrupt = cache.verify(np.unique(where[where >= 0] >> 32))
    if corrupt:
        cache.exclude(corrupt)
        where = cache._locate(np.frombuffer(b"".join(unique), dtype=_DIGEST_DTYPE))
    corrupt |= cache.bad_shards()
    if corrupt and is_main:  # before the barrier: nobody writes (re-creates these ids) until after it
        cache.remove_shards(corrupt)
    missing = [digest for digest, found in zip(unique, where) if found < 0]
    _barrier(accelerator)  # every process has taken stock before anyone writes

    plan = sorted(missing, key=lambda d: (-len(texts[first[d]]), d))
    shards = [plan[i : i + shard_size] for i in range(0, len(plan), shard_size)]
    mine = shards[rank::world]
    todo = sum(len(s) for s in mine)
    bar = progress_bar(encoder, todo, progress if is_main else False, world)
    if is_main and missing:
        logger.info("%s: embedding %d of %d texts (%d cached)", getattr(encoder, "model_id", "encoder"), len(missing),
                    len(unique), len(unique) - len(missing))
    try:
        for shard in mine:
            shard_texts = [texts[first[d]] for d in shard]
            vectors = encoder.encode(shard_texts, batch_size=batch_size, on_batch=bar.update if bar else None)
            cache.write_shard(shard, vectors)
    finally:
        if bar is not None:
            bar.close()
    _barrier(accelerator)  # every shard is written before anyone reads
    cache.refresh()
    stats = EmbedStats(
        requested=len(texts),
        unique=len(unique),
        cached=len(unique) - len(missing),
        encoded=len(missing),
        encoded_here=todo,
        shards_written=len(shards),
        corrupt_shards=len(corrupt),
        seconds=time.perf_counter() - started,
        processes=world,
    )
    cache.last_stats = stats
    if is_main and (missing or corrupt):
        logger.info(
            "%s: %d texts (%d unique): %d cached, %d encoded in %d shards, %d corrupt shards replaced, %.1fs",
            getattr(encoder, "model_id", "encoder"), stats.requested, stats.unique, stats.cached, stats.encoded,
            stats.shards_written, stats.corrupt_shards, stats.seconds,
        )
    return stats


def progress_bar(encoder: Any, total: int, progress: bool | None, world: int = 1) -> Any:
    """A tqdm bar over `total` texts: shown after PROGRESS_DELAY_SECONDS (`progress=None`), at once (True),
    or never (False, or nothing to do)."""
    if progress is False or total == 0:
        return None
    from tqdm.auto import tqdm

    label = getattr(encoder, "model_id", "texts").split("/")[-1]
    desc = f"embed {label}" + (f" [rank 0 of {world}]" if world > 1 else "")
    delay = 0.0 if progress else PROGRESS_DELAY_SECONDS
    return tqdm(total=total, unit="text", desc=desc, mininterval=1.0, dynamic_ncols=True, delay=delay)


def embed_texts(
    encoder: Any,
    texts: Sequence[str],
    *,
    cache: EmbeddingCache | None | bool = None,
    cache_dir: str | os.PathLike | None = None,
    accelerator: Any = None,
    batch_size: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool | None = None,
) -> np.ndarray:
    """Embeddings of these exact texts, in order, `(n, dim)` float32, through the cache.

    `cache`: an `EmbeddingCache`, None for the encoder's default folder under `cache_root(cache_dir)`,
    or False to embed without caching. With an `accelerator` every process must call it with the same
    texts; the shards are split between them and each gets the full result. The hit/miss accounting
    is in `cache.last_stats` (see `ensure_embedded`).
    """
    texts = list(texts)
    parts = getattr(encoder, "parts", None)  # a FusedEncoder: each part through its own cache, side by side
    if parts is not None:
        if isinstance(cache, EmbeddingCache):
            raise ValueError("a FusedEncoder embeds through one cache per part: pass cache_dir, not an EmbeddingCache.")
        kwargs = {"cache_dir": cache_dir, "accelerator": accelerator, "batch_size": batch_size,
                  "shard_size": shard_size, "progress": progress}
        return np.concatenate([embed_texts(part, texts, cache=cache, **kwargs) for part in parts], axis=1)
    if cache is False:
        bar = progress_bar(encoder, len(texts), progress)
        try:
            return encoder.encode(texts, batch_size=batch_size, on_batch=bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
    if not texts:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    cache = cache if isinstance(cache, EmbeddingCache) else EmbeddingCache.for_encoder(encoder, cache_dir)
    ensure_embedded(
        encoder, texts, cache, accelerator=accelerator, batch_size=batch_size, shard_size=shard_size, progress=progress
    )
    return cache.get(texts)


def embed_queries(
    encoder: Any, queries: Sequence[str], instructions: str | Sequence[str] | None = None, **kwargs: Any
) -> np.ndarray:
    """`embed_texts` of the prompted queries (`encoder.format_query`); `instructions`: one for all or one each."""
    queries = list(queries)
    if instructions is None or isinstance(instructions, str):
        instructions = [instructions or ""] * len(queries)
    instructions = list(instructions)
    if len(instructions) != len(queries):
        raise ValueError(f"{len(instructions)} instructions for {len(queries)} queries.")
    return embed_texts(encoder, [encoder.format_query(q, i) for q, i in zip(queries, instructions)], **kwargs)


def embed_documents(encoder: Any, documents: Sequence[str], **kwargs: Any) -> np.ndarray:
    """`embed_texts` of the documents as the encoder shows them (`encoder.format_document`)."""
    return embed_texts(encoder, [encoder.format_document(d) for d in documents], **kwargs)
