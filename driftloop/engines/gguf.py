"""A peft LoRA adapter written in llama.cpp's LoRA GGUF format, beside the base GGUF it
adapts, so llama.cpp serves exactly the adapter the gate judged (not a merged and
requantised copy: the base weights stay the ones evaluated, the adapter stays fp32).

llama.cpp applies `scale * alpha / rank * B @ A` beside each projection, as peft does
with `lora_alpha / r`. Two layout rules of llama.cpp's own HF converter apply: tensors
are named by its block scheme, and the rows of the query and key projections are
permuted for its rotary layout, so their B matrices (whose rows are the projection's
output rows) get the same permutation. A is left alone.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from driftloop.artifacts import ArtifactError, sha256_file
from driftloop.atomic import replace_file

PROJECTIONS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
ARCHITECTURES = {"LlamaForCausalLM": "llama"}
PEFT_NAME = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(.+)\.lora_([AB])\.weight$")


class ExportError(ArtifactError):
    """The adapter cannot be written for llama.cpp; the message says which part and why."""


def _permute(rows, n_head: int):
    """llama.cpp's converter's row order for a rotary projection with `n_head` heads."""
    return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _alpha(config: dict) -> float:
    for field in ("use_dora", "alpha_pattern", "rank_pattern", "modules_to_save"):
        if config.get(field):
            raise ExportError(f"adapter uses {field}={config[field]!r}, which llama.cpp's LoRA format cannot express")
    if config.get("peft_type", "LORA") != "LORA":
        raise ExportError(f"adapter type {config.get('peft_type')!r} is not LoRA")
    alpha, rank = float(config["lora_alpha"]), int(config["r"])
    # rsLoRA scales by alpha / sqrt(r); llama.cpp divides by r, so the alpha it is given carries sqrt(r).
    return alpha * math.sqrt(rank) if config.get("use_rslora") else alpha


def lora_tensors(adapter_dir: Path, model_config: dict) -> tuple[dict, float]:
    """The adapter's tensors under llama.cpp's names, as float32 arrays, and its alpha."""
    from safetensors.numpy import load_file

    architecture = (model_config.get("architectures") or ["?"])[0]
    if architecture not in ARCHITECTURES:
        raise ExportError(f"base model architecture {architecture} has no llama.cpp LoRA mapping here (supported: {', '.join(ARCHITECTURES)})")
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    alpha = _alpha(config)
    heads = {"attn_q": model_config["num_attention_heads"],
             "attn_k": model_config.get("num_key_value_heads") or model_config["num_attention_heads"]}
    out = {}
    for name, array in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        match = PEFT_NAME.match(name)
        if not match or match.group(2) not in PROJECTIONS:
            raise ExportError(f"adapter tensor {name} targets a module llama.cpp's LoRA format has no name for")
        block, target, side = int(match.group(1)), PROJECTIONS[match.group(2)], match.group(3)
        array = array.astype("float32")
        if side == "B" and target in heads:
            array = _permute(array, heads[target])
        out[f"blk.{block}.{target}.weight.lora_{side.lower()}"] = array.copy()
    if not out:
        raise ExportError(f"{adapter_dir} holds no LoRA tensors")
    return out, alpha


def export_lora_gguf(adapter_dir: Path, base_model_dir: Path, target: Path) -> dict:
    """Write the adapter at `adapter_dir` (peft) as a llama.cpp LoRA GGUF at `target`,
    atomically; returns its size and content hash."""
    import gguf

    model_config = json.loads((base_model_dir / "config.json").read_text())
    tensors, alpha = lora_tensors(adapter_dir, model_config)

    def write(path: str) -> None:
        writer = gguf.GGUFWriter(path, arch=ARCHITECTURES[model_config["architectures"][0]])
        writer.add_type("adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", alpha)
        for name in sorted(tensors):
            writer.add_tensor(name, tensors[name])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    replace_file(target, write)
    return {"path": str(target), "sha256": sha256_file(target), "bytes": target.stat().st_size, "tensors": len(tensors), "alpha": alpha}
