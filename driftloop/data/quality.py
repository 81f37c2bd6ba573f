"""Text quality signals: near-duplicates and broken text (PII is driftloop.pii). Plain Python and NumPy."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict

import numpy as np

# Control characters other than tab and newline, and U+FFFD (the decoder's mark for
# bytes it could not read) mean the text was damaged before it reached us.
BROKEN_TEXT_PATTERN = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]"


def _shingles(text: str, width: int) -> set[bytes]:
    words = re.findall(r"\w+", text.lower())
    if len(words) < width:
        return {" ".join(words).encode()} if words else set()
    return {" ".join(words[i : i + width]).encode() for i in range(len(words) - width + 1)}


_MERSENNE = np.uint64((1 << 61) - 1)


def near_duplicates(
    texts: list[str], threshold: float = 0.9, num_perm: int = 64, bands: int = 16, shingle_width: int = 5, seed: int = 7
) -> dict[int, tuple[int, float]]:
    """Map row -> (earlier row it nearly duplicates, Jaccard similarity).

    MinHash with LSH banding finds candidate pairs in near-linear time; each candidate
    is confirmed with the exact Jaccard similarity of word shingles, so a reported
    pair is a real one. The earlier row (by position) is kept, the later one flagged.
    """
    rng = np.random.default_rng(seed)
    a = rng.integers(1, int(_MERSENNE), size=num_perm, dtype=np.uint64)
    b = rng.integers(0, int(_MERSENNE), size=num_perm, dtype=np.uint64)
    rows_per_band = num_perm // bands
    shingle_sets = [_shingles(t, shingle_width) for t in texts]
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for idx, shingles in enumerate(shingle_sets):
        if not shingles:
            continue
        hashed = np.fromiter(
            (int.from_bytes(hashlib.blake2b(s, digest_size=8).digest(), "little") >> 3 for s in shingles),
            dtype=np.uint64, count=len(shingles),
        )
        with np.errstate(over="ignore"):
            signature = ((np.outer(hashed, a) + b) % _MERSENNE).min(axis=0)
        for band in range(bands):
            key = (band, signature[band * rows_per_band : (band + 1) * rows_per_band].tobytes())
            buckets[key].append(idx)
    result: dict[int, tuple[int, float]] = {}
    for members in buckets.values():
        for pos, later in enumerate(members[1:], start=1):
            if later in result:
                continue
            for earlier in members[:pos]:
                if earlier in result:
                    continue
                left, right = shingle_sets[earlier], shingle_sets[later]
                similarity = len(left & right) / len(left | right)
                if similarity >= threshold:
                    result[later] = (earlier, round(similarity, 4))
                    break
    return result
