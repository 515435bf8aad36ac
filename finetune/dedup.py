"""Exact and near-duplicate detection for exports: 64-bit fingerprints and MinHash LSH bands, kept compact.

Near duplicates are found with MinHash over character 5-grams of the normalised
text, banded as locality-sensitive hashing: two texts whose signatures agree on
every row of one band are candidates. A band match is only a candidate, kept
as a near duplicate when the two signatures' estimated similarity reaches the
threshold.

The MinHash and the band tuning are datasketch's (``MinHash(num_perm,
hashfunc=int)`` with its default seed, ``MinHashLSH(threshold, num_perm)``),
written here in a few lines of numpy so that exports need neither datasketch
nor the SciPy it imports; tests/test_dedup_minhash.py keeps both bit-for-bit
equal to datasketch, so exports do not change.

datasketch's in-memory ``MinHashLSH`` keeps a dictionary of sets per band plus
every key's band list: kilobytes per item, gigabytes at a million. Here a kept
item costs one 64-bit key and a 32-bit item number per band, in sorted
``numpy`` arrays (recent additions wait in a small dict, merged in linear time),
plus a one-byte-per-permutation signature to confirm candidates: about 240
bytes per kept item at the default threshold (merges briefly need about twice
the keys' share).
"""

from __future__ import annotations

import hashlib
import re
import zlib

import numpy as np

SHINGLE = 5  # characters per shingle
NUM_PERM = 128
RECENT_LIMIT = 1 << 16  # keys held in a dict before they are merged into the sorted arrays
_SPACES = re.compile(r"\s+")
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def normalise(text: str) -> str:
    """Lower case, whitespace collapsed: the form duplicates are compared in."""
    return _SPACES.sub(" ", text).strip().lower()


def fingerprint(*parts: str) -> int:
    """A 64-bit fingerprint of the normalised parts (exact duplicates share it)."""
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        digest.update(normalise(part).encode("utf-8"))
        digest.update(b"\x00")
    return int.from_bytes(digest.digest(), "little")


class CompactHashMap:
    """64-bit keys to 32-bit values, growing: sorted arrays plus a small dict of recent additions.

    A key added twice keeps its first value.
    """

    def __init__(self, recent_limit: int = RECENT_LIMIT) -> None:
        self._keys = np.empty(0, dtype=np.uint64)
        self._values = np.empty(0, dtype=np.uint32)
        self._recent: dict[int, int] = {}
        self._recent_limit = recent_limit

    def __len__(self) -> int:
        return len(self._keys) + len(self._recent)

    @property
    def nbytes(self) -> int:
        """Memory held, roughly: 12 bytes per merged key, about 100 per recent one."""
        return int(self._keys.nbytes + self._values.nbytes) + 100 * len(self._recent)

    def find(self, keys: np.ndarray) -> list[int]:
        """The values stored under any of ``keys``, without repeats."""
        found: list[int] = []
        recent = self._recent
        if recent:
            for key in keys.tolist():
                value = recent.get(key)
                if value is not None and value not in found:
                    found.append(value)
        stored = self._keys
        if len(stored):
            at = np.searchsorted(stored, keys)
            np.minimum(at, len(stored) - 1, out=at)
            for value in self._values[at[stored[at] == keys]].tolist():
                if value not in found:
                    found.append(value)
        return found

    def __contains__(self, key: int) -> bool:
        return bool(self.find(np.array([key], dtype=np.uint64)))

    def put_many(self, keys: np.ndarray, value: int) -> None:
        stored = self._keys
        if len(stored):
            at = np.searchsorted(stored, keys)
            np.minimum(at, len(stored) - 1, out=at)
            keys = keys[stored[at] != keys]
        for key in keys.tolist():
            self._recent.setdefault(key, value)
        if len(self._recent) >= self._recent_limit:
            self._merge()

    def put(self, key: int, value: int = 0) -> None:
        self.put_many(np.array([key], dtype=np.uint64), value)

    def _merge(self) -> None:
        """Insert the recent keys into the sorted arrays (no full re-sort: about 25 bytes per key at peak)."""
        count = len(self._recent)
        keys = np.fromiter(self._recent.keys(), dtype=np.uint64, count=count)
        values = np.fromiter(self._recent.values(), dtype=np.uint32, count=count)
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], values[order]
        # Where each new key lands; "right" keeps a key already stored first (its value wins).
        at = np.searchsorted(self._keys, keys, side="right") + np.arange(count)
        total = len(self._keys) + count
        old = np.ones(total, dtype=bool)
        old[at] = False
        merged_keys = np.empty(total, dtype=np.uint64)
        merged_values = np.empty(total, dtype=np.uint32)
        merged_keys[at], merged_values[at] = keys, values
        merged_keys[old], merged_values[old] = self._keys, self._values
        self._keys, self._values = merged_keys, merged_values
        self._recent.clear()


class Signatures:
    """One row of ``width`` bytes per kept text (the low byte of each MinHash value), in fixed blocks."""

    BLOCK = 1 << 16  # rows per block: growing never copies what is stored

    def __init__(self, width: int) -> None:
        self.width = width
        self._blocks: list[np.ndarray] = []
        self.count = 0

    @property
    def nbytes(self) -> int:
        return sum(int(block.nbytes) for block in self._blocks)

    def append(self, row: np.ndarray) -> int:
        block, offset = divmod(self.count, self.BLOCK)
        if block == len(self._blocks):
            self._blocks.append(np.empty((self.BLOCK, self.width), dtype=np.uint8))
        self._blocks[block][offset] = row
        self.count += 1
        return self.count - 1

    def similarity(self, index: int, row: np.ndarray) -> float:
        """Estimated Jaccard similarity: b-bit MinHash, corrected for chance agreement of one byte."""
        block, offset = divmod(index, self.BLOCK)
        agree = float(np.count_nonzero(self._blocks[block][offset] == row)) / len(row)
        return max(0.0, (agree - 1 / 256) / (1 - 1 / 256))


def shingle_hashes(data: bytes) -> np.ndarray:
    """32-bit hashes (as uint64) of the distinct ``SHINGLE``-byte windows of ``data``, computed with numpy.

    Each window's bytes form one integer (exact, no collision), mixed down to
    32 bits by multiply-shift; ``minhash`` mixes each of them again per permutation.
    """
    raw = np.frombuffer(data, dtype=np.uint8).astype(np.uint64)
    windows = len(raw) - SHINGLE + 1
    if windows <= 1:
        return np.array([zlib.crc32(data)], dtype=np.uint64)
    value = raw[:windows].copy()
    for offset in range(1, SHINGLE):
        value = (value << np.uint64(8)) | raw[offset : offset + windows]
    with np.errstate(over="ignore"):
        mixed = (np.unique(value) * _SHINGLE_MULTIPLIER) >> np.uint64(32)
    return mixed


_SHINGLE_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(values: np.ndarray) -> np.ndarray:
    """A 64-bit finaliser (SplitMix64), element-wise with wrap-around."""
    with np.errstate(over="ignore"):
        values = values + np.uint64(0x9E3779B97F4A7C15)
        values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return values ^ (values >> np.uint64(31))


# datasketch 2's default MinHash ("affine32"): each input hash premixed by MurmurHash3's 32-bit
# finaliser, then permuted as a * h + b in uint32 (a odd): a bijection of the 32-bit range.
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))
_EMPTY = np.uint32(0xFFFFFFFF)  # a permutation's value before any input
_CHUNK = 2048  # inputs per step: bounds the (inputs x permutations) temporary at 1 MiB
_PERMUTATION_SEED = 1  # datasketch's default seed


def lsh_parameters(threshold: float, num_perm: int) -> tuple[int, int]:
    """The (bands, rows) that datasketch's ``MinHashLSH(threshold, num_perm)`` chooses.

    datasketch minimises 0.5 * P(false positive) + 0.5 * P(false negative), the
    areas under ``1 - (1 - s**r)**b`` on [0, threshold] and ``(1 - s**r)**b`` on
    [threshold, 1], over every b * r <= num_perm, keeping the first minimum in
    (b, r) order; it integrates with SciPy's ``quad``. Both integrands are
    polynomials of degree b * r <= num_perm, so Gauss-Legendre quadrature with
    num_perm // 2 + 1 nodes is exact up to rounding: the same choice, without
    SciPy, except where two pairs' errors tie to within rounding (the tests check
    a fine grid of thresholds). Above a threshold of about 0.98 the best is one
    band, which datasketch refuses (b < 2) and which works here.
    """
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    bands = np.array([b for b, _ in pairs], dtype=np.float64)[:, None]
    rows = np.array([r for _, r in pairs], dtype=np.float64)[:, None]
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 1)

    def area(start: float, end: float, false_positive: bool) -> np.ndarray:
        half = (end - start) / 2
        points = start + half * (nodes + 1)
        missed = (1 - points[None, :] ** rows) ** bands  # P(no band matches) at similarity s
        return ((1 - missed if false_positive else missed) @ weights) * half

    error = 0.5 * area(0.0, threshold, True) + 0.5 * area(threshold, 1.0, False)
    return pairs[int(np.argmin(error))]  # argmin: the first minimum, as datasketch's strict "<"


def minhash_permutations(num_perm: int, seed: int = _PERMUTATION_SEED) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine permutations ``(a, b)``: odd ``a`` then ``b``, uint32, from ``RandomState(seed)``."""
    generator = np.random.RandomState(seed)
    multipliers = generator.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    increments = generator.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return multipliers, increments


def minhash(hashes: np.ndarray, multipliers: np.ndarray, increments: np.ndarray) -> np.ndarray:
    """The MinHash signature (uint32) of 32-bit input hashes: datasketch's ``update_batch``, bit for bit.

    The arithmetic is modulo 2**32 on purpose, as in datasketch: the finaliser's
    products and ``a * h + b`` overflow uint32 and numpy wraps them (it warns
    about overflow for scalars only, never for arrays). Widening to uint64, or
    reducing modulo a prime as datasketch 1.x did, would give other values and
    so other band keys and other exports; tests/test_dedup_minhash.py checks
    the signatures against datasketch's.
    """
    signature = np.full(len(multipliers), _EMPTY, dtype=np.uint32)
    shift1, multiply1, shift2, multiply2, shift3 = _FMIX32
    for start in range(0, len(hashes), _CHUNK):
        mixed = np.asarray(hashes[start : start + _CHUNK]).astype(np.uint32)
        mixed ^= mixed >> shift1
        mixed *= multiply1
        mixed ^= mixed >> shift2
        mixed *= multiply2
        mixed ^= mixed >> shift3
        values = mixed[:, None] * multipliers
        values += increments
        np.minimum(signature, values.min(axis=0), out=signature)
    return signature


class NearDuplicateIndex:
    """MinHash LSH over the texts kept so far: ``seen_or_add(text)`` says whether a near duplicate is kept.

    Texts sharing a band are only candidates: each candidate's stored one-byte
    signature confirms the estimated similarity reaches the threshold, so the
    many pairs of a large export do not add up to false alarms.
    """

    def __init__(self, threshold: float, num_perm: int = NUM_PERM) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError("the near-duplicate threshold must be between 0 and 1")
        self.threshold = threshold
        self.bands, self.rows = lsh_parameters(threshold, num_perm)
        self._permutations = minhash_permutations(num_perm)
        generator = np.random.default_rng(0x5EED)
        self._multipliers = generator.integers(1, 2**63, size=self.rows, dtype=np.uint64) | np.uint64(1)
        self._salts = generator.integers(0, 2**63, size=self.bands, dtype=np.uint64)
        self._bands = CompactHashMap()
        self._signatures = Signatures(num_perm)

    def __len__(self) -> int:
        return self._signatures.count

    @property
    def nbytes(self) -> int:
        return self._bands.nbytes + self._signatures.nbytes

    def signature(self, text: str) -> np.ndarray:
        """The text's MinHash signature: ``num_perm`` uint32 values."""
        return minhash(shingle_hashes(normalise(text).encode("utf-8")), *self._permutations)

    def band_keys(self, signature: np.ndarray) -> np.ndarray:
        rows = signature[: self.bands * self.rows].astype(np.uint64).reshape(self.bands, self.rows)
        with np.errstate(over="ignore"):
            combined = (rows * self._multipliers).sum(axis=1, dtype=np.uint64)
        return _splitmix(combined ^ self._salts)

    def seen_or_add(self, text: str) -> bool:
        """True when a kept text is a near duplicate of ``text``; otherwise ``text`` is kept and False."""
        signature = self.signature(text)
        keys = self.band_keys(signature)
        low = signature.astype(np.uint8)
        for candidate in self._bands.find(keys):
            if self._signatures.similarity(candidate, low) >= self.threshold:
                return True
        self._bands.put_many(keys, self._signatures.append(low))
        return False
