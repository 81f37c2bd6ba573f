"""llama.cpp as the generation engine: its server code in process (the pinned `xllamacpp`
wheel, nothing compiled), on the GGUF file the base model was converted from, so the
quantised weights it runs are the ones whose dequantised copy transformers trains on.

Adapters stay adapters: each peft LoRA is exported to llama.cpp's LoRA GGUF
(driftloop/engines/gguf.py) and loaded beside the base, applied per request by scale, so
the champion, a challenger and the shadow share one loaded model. llama.cpp keeps each
slot's prompt cache (`cache_prompt`), its own form of prefix reuse.

Prompts go in as token ids of the same tokenizer (the GGUF's vocabulary, converted), and
every request streams internally: token ids come back with each piece (`logprobs`), so a
row's sink gets ids as transformers' streamer gives them, and a stop string ends the
request the moment it appears (the answer keeps it, as transformers' does; the caller cuts).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from driftloop.artifacts import ArtifactError, verify
from driftloop.engines import EngineError
from driftloop.engines.gguf import export_lora_gguf
from driftloop.evaluation.generate import BASE, Answer

CTX_PER_SLOT = 4096


def base_gguf(base_path: Path) -> Path:
    """The GGUF file a converted base model folder came from (its manifest's `source`)."""
    try:
        source = verify(base_path).get("source", "")
    except ArtifactError as err:
        raise EngineError(f"llama.cpp serves a GGUF base model; {base_path} is not one driftloop converted from a GGUF ({err})") from err
    path = Path(source)
    if path.suffix != ".gguf" or not path.is_file():
        raise EngineError(f"llama.cpp serves a GGUF base model; {base_path} came from {source or 'no GGUF'} "
                          f"(set the generator model to a .gguf file or a packaged GGUF model)")
    return path


def exported_beside(adapter_dir: Path) -> Path:
    """Where a sealed folder (a serving bundle) keeps an adapter's llama.cpp export."""
    return adapter_dir.parent / f"{adapter_dir.name}.gguf"


def _adapter_digest(adapter_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        digest.update((adapter_dir / name).read_bytes())
    return digest.hexdigest()[:20]


class LlamaCppGenerator:
    def __init__(self, base_path: str, slots: int = 8, threads: int | None = None, export_dir: Path | None = None) -> None:
        from transformers import AutoTokenizer

        self.base_path = Path(base_path)
        self.gguf = base_gguf(self.base_path)
        self.tokenizer = AutoTokenizer.from_pretrained(base_path)
        self.precision = f"gguf:{self.gguf.stem.rsplit('.', 1)[-1]}"
        self.device = "cpu"
        self.slots = slots
        self.threads = threads or len(os.sched_getaffinity(0))
        self.export_dir = export_dir or self.base_path.parent / "lora_gguf"
        self.adapters: dict[str, Path] = {}  # name -> exported LoRA GGUF, in llama.cpp's adapter id order
        self.merged: str | None = None  # the adapter requests without one run with (a service's champion)
        self._server = None
        self._start = threading.Lock()
        self._reused = 0

    def _export(self, adapter_dir: Path) -> Path:
        beside = exported_beside(adapter_dir)
        if beside.is_file():
            return beside
        target = self.export_dir / f"{_adapter_digest(adapter_dir)}.gguf"
        if not target.is_file():
            export_lora_gguf(adapter_dir, self.base_path, target)
        return target

    def add_adapter(self, name: str, path: Path) -> None:
        if name == BASE or name in self.adapters:
            raise ValueError(f"adapter name {name!r} is taken")
        self.adapters[name] = self._export(Path(path))
        self._server = None  # llama.cpp loads its adapters at start

    def merge(self, path: Path) -> None:
        """llama.cpp keeps the champion as an adapter applied to every request without one:
        its base weights are quantised, and a merge would requantise them."""
        self.add_adapter("champion", path)
        self.merged = "champion"

    def add_adapter_over_merged(self, name: str, path: Path, merged: Path | None) -> None:
        """Adapters apply per request here, so `name` runs without the merged one already."""
        self.add_adapter(name, path)

    def reused_tokens(self) -> int:
        return self._reused

    def server(self):
        with self._start:
            if self._server is None:
                import xllamacpp

                params = xllamacpp.CommonParams()
                params.model.path = str(self.gguf)
                params.n_parallel, params.n_ctx, params.warmup = self.slots, self.slots * CTX_PER_SLOT, False
                params.verbosity = -1  # its per-request timing lines; failures come back in the responses
                params.cpuparams.n_threads = params.cpuparams_batch.n_threads = self.threads
                loras = []
                for path in self.adapters.values():
                    info = xllamacpp.CommonAdapterLoraInfo()
                    info.path, info.scale = str(path), 0.0
                    loras.append(info)
                params.lora_adapters, params.lora_init_without_apply = loras, True
                self._server = xllamacpp.Server(params)
            return self._server

    def answer(self, name: str, prompts: Sequence[str], ids: Sequence[str], max_new_tokens: int = 96, batch_size: int = 8,
               temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, stop: Sequence[str] = (),
               sinks: Sequence[Callable[[int], None] | None] | None = None) -> list[Answer]:
        """The Answerer's contract; all prompts run at once in llama.cpp's slots."""
        active = self.merged if name == BASE else name
        if name != BASE and name not in self.adapters:
            raise KeyError(f"no adapter named {name!r}; loaded: {sorted(self.adapters)}")
        lora = [{"id": n, "scale": 1.0 if adapter == active else 0.0} for n, adapter in enumerate(self.adapters)]
        server = self.server()

        def one(n: int) -> Answer:
            sink = sinks[n] if sinks else None
            body = {"prompt": self.tokenizer(prompts[n], add_special_tokens=False)["input_ids"], "n_predict": max_new_tokens,
                    "temperature": max(temperature, 0.0), "top_p": top_p, "cache_prompt": True, "stream": True, "logprobs": 1,
                    "lora": lora}
            if seed is not None:
                body["seed"] = seed + n
            tokens: list[int] = []
            text: list[str] = []
            failure: list[str] = []

            def receive(chunk: dict) -> bool:
                if "error" in chunk:
                    failure.append(str(chunk["error"]))
                    return True
                choice = (chunk.get("choices") or [{}])[0]
                for token in ((choice.get("logprobs") or {}).get("content") or []):
                    tokens.append(int(token["id"]))
                    if sink is not None:
                        sink(int(token["id"]))
                text.append(choice.get("text") or "")
                self._reused += int((chunk.get("timings") or {}).get("cache_n", 0))
                return bool(stop) and any(s in "".join(text) for s in stop)

            started = time.perf_counter()
            server.handle_completions(body, receive)
            if failure:
                raise EngineError(f"llama.cpp: {failure[0][:300]}")
            return Answer(ids[n], "".join(text).strip(), time.perf_counter() - started, len(tokens))

        with ThreadPoolExecutor(max_workers=max(1, min(len(prompts), self.slots))) as pool:
            return list(pool.map(one, range(len(prompts))))

    def answer_nll(self, name: str, prompts: Sequence[str], references: Sequence[str]):
        raise EngineError("the llama.cpp engine generates; likelihoods are scored by transformers (Answerer.generate_with)")
