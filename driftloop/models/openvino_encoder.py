"""The embedder's OpenVINO path: the same transformer, compiled by OpenVINO's CPU plugin.

bench/embeddings.py measured this path level with sentence-transformers' fastest CPU backend
and 2.7x its plain fp32 torch path on a 2-core AMX Xeon, at the same recall@10 (inference in
bf16 where driftloop sees fast bf16 units, f32 elsewhere). This converts the loaded torch module with the
`openvino` package alone (no optimum-intel, whose transformers pin conflicts with ours),
caches the IR content-addressed and writes it atomically, and pools and normalises in numpy
as sentence-transformers' Pooling(mean) and Normalize modules do.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np

from driftloop.models import hardware

SUPPORTED_PIPELINES = (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"])


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def opt_out_of_telemetry() -> None:
    """`import openvino` sends a usage event unless ~/intel/openvino_telemetry holds "0"
    (openvino_telemetry's OptInChecker; openvino/tools/ovc/__init__.py). Write that file
    before the import; `opt_in_out --opt_out` would send an opt-out event first."""
    from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker

    checker = OptInChecker()
    declined = checker.check(enable_opt_in_dialog=False) == ConsentCheckResult.DECLINED
    if checker.consent_file_base_dir() is not None and not declined:
        checker.update_result(ConsentCheckResult.DECLINED)


def supports(st_model) -> bool:
    """Mean pooling over the transformer's last hidden state, optionally normalised."""
    names = [type(module).__name__ for module in st_model]
    if names not in SUPPORTED_PIPELINES:
        return False
    return st_model[1].get_config_dict().get("pooling_mode") == "mean" and "token_type_ids" in st_model.tokenizer("x")


class OpenVINOEncoder:
    def __init__(self, st_model, cache_dir: Path, fingerprint: str) -> None:
        import torch

        opt_out_of_telemetry()
        import openvino as ov

        self.tokenizer = st_model.tokenizer
        self.max_seq_length = int(st_model.max_seq_length)
        self.input_names = ["input_ids", "attention_mask", "token_type_ids"]
        key = re.sub(r"[^\w.-]", "_", f"{fingerprint}-ov{ov.__version__}-torch{torch.__version__}")
        xml = Path(cache_dir) / key / "model.xml"
        if not xml.is_file():
            self._convert(st_model, xml)
        core = ov.Core()
        # OpenVINO picks bf16 by itself on CPUs it knows to have it; driftloop's own view of
        # the CPU decides, so a CPU without fast bf16 (or `make test-avx2`) infers in f32.
        config = {} if hardware.cpu_has_fast_bf16() else {"INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(core.read_model(str(xml)), "CPU", config)
        # An InferRequest serves one inference at a time ("Infer Request is busy"), and the
        # service encodes from several threads: each thread gets its own request.
        self._local = threading.local()
        self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def _convert(self, st_model, xml: Path) -> None:
        """Trace the transformer once and save the IR in f32 (save_model would halve it to
        fp16 by default); a temp folder renamed into place, so readers never see half."""
        import openvino as ov
        import torch

        transformer = st_model[0].auto_model.eval()

        class Hidden(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.transformer = transformer

            def forward(self, input_ids, attention_mask, token_type_ids):
                out = self.transformer(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
                return out.last_hidden_state

        example = self.tokenizer(["an example", "a second, longer example"], padding=True, return_tensors="pt")
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer flags two branches (mask padding, causal flag) that are constant for an
            # encoder fed its own mask; tests/test_embedding_openvino.py checks padded batches.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            model = ov.convert_model(Hidden(), example_input=tuple(example[name] for name in self.input_names))
        for port, name in zip(model.inputs, self.input_names, strict=True):
            port.get_tensor().set_names({name})
        xml.parent.parent.mkdir(parents=True, exist_ok=True)
        tmp = xml.parent.with_name(f".{xml.parent.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            ov.save_model(model, str(tmp / xml.name), compress_to_fp16=False)
            os.rename(tmp, xml.parent)
        except OSError:
            if not xml.is_file():  # another process may have won the rename; only then is this fine
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-norm float32 vectors for one batch."""
        features = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="np")
        inputs = {name: features[name].astype(np.int64) for name in self.input_names}
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        hidden = request.infer(inputs)[self.compiled.output(0)].astype(np.float32)
        mask = inputs["attention_mask"][:, :, None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
