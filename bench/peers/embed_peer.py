"""The peer side of bench/embeddings.py: sentence-transformers at each of its CPU backends.

Runs in its own venv (.venv-embed-peers, pinned by bench/peers/embeddings.txt), because
the onnx/openvino extras need a transformers older than the product's. bench/embeddings.py
starts it and drives it over a pipe, one JSON command a line:

    {"cmd": "load", "setting": "onnx-int8"}                 -> {"ok": true, "info": {...}}
    {"cmd": "encode", "setting": ..., "what": "chunks", "batch_size": 32, "limit": 0,
     "save": "/tmp/x.npy", "texts": optional other JSON}    -> {"seconds": 12.3}
    {"cmd": "quit"}

The texts come from a JSON file ({"chunks": [...], "queries": [...]}) so both sides embed
identical inputs; vectors go back as .npy files. Exports are cached under --cache, keyed by
the model's content, never written into the installed model package.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

SETTINGS = ("st-fp32", "st-bf16", "onnx-fp32", "onnx-o3", "onnx-int8", "openvino-fp32", "openvino-default", "openvino-int8")
VNNI_CONFIGS = ("avx512_vnni", "avx512", "avx2")


def opt_out_of_openvino_telemetry() -> None:
    """NNCF sends telemetry unless ~/intel/openvino_telemetry holds "0" (openvino_telemetry's
    OptInChecker). Write that file directly: `opt_in_out --opt_out` would first send an
    opt-out event (Telemetry._update_opt_in_status, force_send=True)."""
    from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker

    if not OptInChecker().update_result(ConsentCheckResult.DECLINED):
        raise SystemExit("could not write the OpenVINO telemetry opt-out file")


def fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def model_copy(model: Path, cache: Path) -> Path:
    """A private copy of the model folder, so exports land beside it and not in site-packages."""
    target = cache / f"{model.name}-{fingerprint(model)}"
    if not target.exists():
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.copytree(model, tmp)
        tmp.rename(target)
    return target


def quant_config() -> str:
    flags = set(Path("/proc/cpuinfo").read_text().split())
    return next((c for c in VNNI_CONFIGS if c in flags), "arm64")


def _exported(root: Path, file: str, export) -> None:
    if not (root / file).exists():
        export()


def load(setting: str, root: Path, calibration: list[str]):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import backend as stb

    if setting == "st-fp32":
        return SentenceTransformer(str(root), device="cpu", local_files_only=True)
    if setting == "st-bf16":
        return SentenceTransformer(str(root), device="cpu", local_files_only=True, model_kwargs={"torch_dtype": torch.bfloat16})
    if setting.startswith("onnx"):
        # ST picks onnxruntime's first provider, which is the Azure EP in this build: ask for the CPU one.
        onnx_kwargs = {"provider": "CPUExecutionProvider"}

        def base():
            kwargs = {**onnx_kwargs, **({"file_name": "onnx/model.onnx"} if (root / "onnx/model.onnx").exists() else {})}
            return SentenceTransformer(str(root), device="cpu", backend="onnx", local_files_only=True, model_kwargs=kwargs)

        _exported(root, "onnx/model.onnx", lambda: base().save_pretrained(str(root)))
        if setting == "onnx-fp32":
            file = "onnx/model.onnx"
        elif setting == "onnx-o3":
            file = "onnx/model_O3.onnx"
            _exported(root, file, lambda: stb.export_optimized_onnx_model(base(), "O3", str(root)))
        else:
            config = quant_config()
            file = f"onnx/model_qint8_{config}.onnx"
            _exported(root, file, lambda: stb.export_dynamic_quantized_onnx_model(base(), config, str(root)))
        return SentenceTransformer(str(root), device="cpu", backend="onnx", local_files_only=True,
                                   model_kwargs={**onnx_kwargs, "file_name": file})
    if setting.startswith("openvino"):
        def base():
            kwargs = {"file_name": "openvino/openvino_model.xml"} if (root / "openvino/openvino_model.xml").exists() else {}
            return SentenceTransformer(str(root), device="cpu", backend="openvino", local_files_only=True, model_kwargs=kwargs)

        _exported(root, "openvino/openvino_model.xml", lambda: base().save_pretrained(str(root)))
        # OpenVINO's CPU plugin runs f32 models in bf16 where the CPU has native bf16 (its
        # INFERENCE_PRECISION_HINT default); "openvino-fp32" forces f32, "openvino-default" keeps it.
        ov_config = {"INFERENCE_PRECISION_HINT": "f32"} if setting == "openvino-fp32" else {}
        file = "openvino/openvino_model.xml"
        if setting == "openvino-int8":
            suffix = "qint8_" + hashlib.sha256(json.dumps(calibration).encode()).hexdigest()[:12]  # keyed by its calibration
            file = f"openvino/openvino_model_{suffix}.xml"
            _exported(root, file, lambda: export_openvino_int8(base(), root, calibration, suffix))
        return SentenceTransformer(str(root), device="cpu", backend="openvino", local_files_only=True,
                                   model_kwargs={"file_name": file, "ov_config": ov_config})
    raise ValueError(f"unknown setting {setting!r}; choose from {SETTINGS}")


def export_openvino_int8(model, root: Path, calibration: list[str], suffix: str) -> None:
    """sentence-transformers' static int8 export, calibrated on corpus text instead of the
    glue/sst2 download it defaults to: a local JSON-lines folder passes as `dataset_name`."""
    from optimum.intel import OVQuantizationConfig
    from sentence_transformers.backend import export_static_quantized_openvino_model

    data = root / "calibration"
    data.mkdir(exist_ok=True)
    with (data / "train.jsonl").open("w") as out:
        for text in calibration:
            out.write(json.dumps({"sentence": text}) + "\n")
    export_static_quantized_openvino_model(
        model, OVQuantizationConfig(num_samples=len(calibration)), str(root),
        dataset_name=str(data), dataset_config_name="default", dataset_split="train", column_name="sentence", file_suffix=suffix,
    )


def info(model, setting: str) -> dict:
    import torch

    out = {"torch_threads": torch.get_num_threads()}
    inner = model[0].auto_model
    if setting.startswith("onnx"):
        options = inner.model.get_session_options()
        out["ort_intra_op_threads"] = options.intra_op_num_threads
        out["ort_providers"] = inner.model.get_providers()
    if setting.startswith("openvino"):
        compiled = inner.request.get_compiled_model() if hasattr(inner.request, "get_compiled_model") else inner.request
        for key in ("INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT"):
            try:
                out[key] = str(compiled.get_property(key))
            except Exception as error:  # the property set differs by OpenVINO version; report, don't fail
                out[key] = f"n/a ({type(error).__name__})"
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--texts", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--calibration", type=int, default=300)
    args = parser.parse_args()

    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library chatter goes to stderr; stdout carries only our replies
    opt_out_of_openvino_telemetry()
    import numpy as np

    texts = json.loads(Path(args.texts).read_text())
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    root = model_copy(Path(args.model), cache)
    step = max(1, len(texts["chunks"]) // args.calibration)
    calibration = texts["chunks"][::step][: args.calibration]
    models = {}
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        setting = command["setting"]
        if command["cmd"] == "load":
            start = time.perf_counter()
            models[setting] = load(setting, root, calibration)
            reply = {"ok": True, "load_s": time.perf_counter() - start, "info": info(models[setting], setting)}
        else:
            # A command may bring its own texts file (bench/incremental.py's edited corpus).
            source = json.loads(Path(command["texts"]).read_text()) if command.get("texts") else texts
            batch = source[command["what"]][: command.get("limit") or None]
            start = time.perf_counter()
            vectors = models[setting].encode(batch, batch_size=command["batch_size"], normalize_embeddings=True,
                                             convert_to_numpy=True, show_progress_bar=False)
            reply = {"seconds": time.perf_counter() - start}
            if command.get("save"):
                np.save(command["save"], vectors.astype(np.float32))
        replies.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
