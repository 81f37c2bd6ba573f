"""Query latency (p50/p99, one query at a time) and recall@10 against exact search,
for flat, HNSW and IVF indexes at 10k and 100k vectors of dimension 384.

Vectors are drawn around cluster centres, as sentence embeddings are, not uniformly.

    .venv/bin/python bench/index_latency.py [--sizes 10000 100000] [--queries 1000]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from driftloop.retrieval.index import build_index, choose_spec  # noqa: E402


def clustered(n: int, dim: int, rng) -> np.ndarray:
    centres = rng.normal(size=(max(8, n // 200), dim)).astype(np.float32)
    vectors = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"machine: {machine()}; one thread per query, dimension {args.dim}")
    print(f"{'vectors':>8} {'index':>6} {'build s':>8} {'p50 ms':>8} {'p99 ms':>8} {'recall@10':>10}")
    headline = {}
    for n in args.sizes:
        data = clustered(n + args.queries, args.dim, rng)
        base, queries = data[:n], data[n:]
        truth = None
        for kind in ("flat", "hnsw", "ivf"):
            start = time.perf_counter()
            index = build_index(base, choose_spec(n, kind))
            build = time.perf_counter() - start
            latencies, found = [], []
            for q in queries:
                t = time.perf_counter()
                _, ids = index.search(q[None, :], 10)
                latencies.append((time.perf_counter() - t) * 1000)
                found.append(ids[0])
            found = np.array(found)
            if kind == "flat":
                truth = found
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
            p50, p99 = np.percentile(latencies, [50, 99])
            headline[(n, kind)] = p50
            print(f"{n:>8} {kind:>6} {build:>8.2f} {p50:>8.3f} {p99:>8.3f} {recall:>10.3f}")
    n = max(args.sizes)
    print(f"RESULT hnsw_p50_ms_at_{n}={headline[(n, 'hnsw')]:.3f} baseline={headline[(n, 'flat')]:.3f} ratio={headline[(n, 'flat')] / headline[(n, 'hnsw')]:.1f}")


if __name__ == "__main__":
    main()
