"""The service's Prometheus metrics, declared once for its processes and modules."""

import bentoml

latency_hist = bentoml.metrics.Histogram(name="driftloop_request_seconds", documentation="End-to-end latency per endpoint",
                                         labelnames=["endpoint"], buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64))
tokens_total = bentoml.metrics.Counter(name="driftloop_tokens", documentation="Tokens processed", labelnames=["kind"])
blocks_total = bentoml.metrics.Counter(name="driftloop_guardrail_blocks", documentation="Requests or answers blocked", labelnames=["reason"])
batch_size = bentoml.metrics.Histogram(name="driftloop_generate_batch_size", documentation="Requests per generate batch",
                                       buckets=(1, 2, 4, 8, 16, 32, 64))
errors_total = bentoml.metrics.Counter(name="driftloop_errors", documentation="Requests that failed", labelnames=["endpoint", "status"])
cache_total = bentoml.metrics.Counter(name="driftloop_semantic_cache", documentation="Semantic cache lookups", labelnames=["result"])
routes_total = bentoml.metrics.Counter(name="driftloop_routes", documentation="Requests by the router's path", labelnames=["path"])
