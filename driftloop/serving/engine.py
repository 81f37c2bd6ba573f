"""The models behind the service, loaded from a bundle: the base generator with the
champion adapter, the embedding model, the vector index and the prompt template."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from driftloop.injection import InjectionScreen
from driftloop.serving.bundle import Bundle


PRIMARY, SHADOW = "primary", "shadow"


class BundleMismatch(RuntimeError):
    """The models on this machine are not the ones the bundle was built with."""


def check_base_model(bundle: Bundle) -> str:
    from driftloop.models.generator import weights_hash

    base = bundle.spec["base_model"]
    path = Path(base["path"])
    if not (path / "config.json").is_file():
        raise BundleMismatch(f"base model {base['name']} is not at {path}; build the bento on this machine or mount the model there")
    found = weights_hash(path)
    if found != base["version"]:
        raise BundleMismatch(f"base model at {path} has weights {found}, the bundle was built on {base['version']}")
    return str(path)


class Generation:
    """The generator half: batched greedy answers with the champion adapter merged in, by
    the engine and in the precision evaluation used (the bundle's settings), unless
    `precision` (DRIFTLOOP_SERVE_PRECISION) overrides it."""

    def __init__(self, bundle: Bundle, device: str = "cpu", precision: str = "", prefix_cache_mb: int = 512, slots: int = 8) -> None:
        from driftloop.engines import load_generator
        from driftloop.evaluation.generate import BASE

        self.bundle = bundle
        settings = bundle.spec.get("settings", {})
        precision = precision or settings.get("generator_precision", "auto")
        self.engine = settings.get("generator_engine", "transformers")
        self.answerer = load_generator(self.engine, check_base_model(bundle), device, precision=precision, prefix_cache_mb=prefix_cache_mb,
                                       slots=slots)
        if bundle.adapter_dir is not None:
            self.answerer.merge(bundle.adapter_dir)
        if bundle.shadow_dir is not None:
            self.answerer.add_adapter_over_merged(SHADOW, bundle.shadow_dir, bundle.adapter_dir)
        self.adapter = BASE

    def count_tokens(self, text: str) -> int:
        return len(self.answerer.tokenizer(text, add_special_tokens=False)["input_ids"])

    def reused_tokens(self) -> int:
        """Prompt tokens taken from the prefix cache so far, not computed."""
        return self.answerer.reused_tokens()

    def generate(self, prompts: Sequence[str], max_new_tokens: int, sampling: dict | None = None,
                 sinks: Sequence[Callable[[int], None] | None] | None = None, adapter: str = PRIMARY) -> list[dict]:
        """One batch, sampled as `sampling` (temperature, top_p, seed, stop) says; greedy by
        default, by the champion or (`adapter` "shadow") the bundle's shadow adapter. A
        prompt's sink, where given, receives its tokens as they are generated."""
        from driftloop.serving.chat import Sampling, apply_stop

        if adapter not in (PRIMARY, SHADOW) or (adapter == SHADOW and self.bundle.shadow_dir is None):
            raise KeyError(f"no adapter {adapter!r} in this service (it serves {PRIMARY}{' and ' + SHADOW if self.bundle.shadow_dir else ''})")
        how = Sampling.from_dict(sampling)
        answers = self.answerer.answer(self.adapter if adapter == PRIMARY else SHADOW, list(prompts), [str(n) for n in range(len(prompts))], max_new_tokens, batch_size=len(prompts),
                                       temperature=how.temperature, top_p=how.top_p, seed=how.seed, stop=how.stop, sinks=sinks)
        out = []
        for answer, prompt in zip(answers, prompts, strict=True):
            text, stopped = apply_stop(answer.answer, how.stop)
            out.append({"text": text.strip() if stopped else text, "completion_tokens": answer.new_tokens, "prompt_tokens": self.count_tokens(prompt),
                        "stopped": stopped})
        return out


class Retrieval:
    """The retrieval half: the embedding model and the bundled index. With a `screen`,
    every retrieved chunk passes it before it can reach a prompt: a chunk the same
    classifier cleared at ingest (its `screened_by`) is trusted, any other is screened
    once (verdicts cached by content) and dropped when flagged, `on_flagged` told."""

    def __init__(self, bundle: Bundle, device: str = "cpu", screen: bool = False,
                 on_flagged: Callable[[dict, object], None] | None = None) -> None:
        from driftloop.models.embedding import load_embedder
        from driftloop.retrieval.index import VectorIndex

        self.embedder = load_embedder(bundle.spec["embedding_model"], device, bundle.spec.get("settings", {}).get("embedding_precision", "auto"))
        self.index = VectorIndex(bundle.index_dir)
        self.screen = InjectionScreen.sharing(self.embedder) if screen else None
        self.on_flagged = on_flagged

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.encode(list(texts))

    def search(self, questions: Sequence[str], k: int, vectors: np.ndarray | None = None) -> list[list[dict]]:
        """The top `k` chunks of each question; `vectors`, when the caller embedded them already."""
        scores, ids = self.index.search(self.embed(questions) if vectors is None else vectors, k, list(questions))
        out = []
        for score_row, id_row in zip(scores, ids, strict=True):
            rows = [(self.index.chunks[int(i)], float(s)) for s, i in zip(score_row, id_row, strict=True) if int(i) >= 0]
            keep = self._screened([row for row, _ in rows])
            out.append([{**{key: row.get(key) for key in ("chunk_id", "doc_id", "text")}, "score": score}
                        for (row, score), kept in zip(rows, keep, strict=True) if kept])
        return out

    def _screened(self, rows: list[dict]) -> list[bool]:
        if self.screen is None:
            return [True] * len(rows)
        todo = [i for i, row in enumerate(rows) if row.get("screened_by") != self.screen.version]
        verdicts = self.screen.documents([rows[i]["text"] for i in todo]) if todo else []
        keep = [True] * len(rows)
        for i, verdict in zip(todo, verdicts, strict=True):
            if verdict.flagged:
                keep[i] = False
                if self.on_flagged is not None:
                    self.on_flagged(rows[i], verdict)
        return keep
