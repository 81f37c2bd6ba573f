"""Training stage: the base generator and a LoRA adapter trained on the instruction dataset."""

from datetime import timedelta
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field, model_validator

from assets.common import GPU_POD, OWNERS, energy_metadata, json_meta, load_dataset
from assets.keys import BASE_MODEL, INSTRUCTION_DATASET, LORA_ADAPTER
from assets.stage import Stage
from driftloop.energy import measured
from driftloop.models.generator import model_summary
from driftloop.models.hardware import resolve_device
from driftloop.plots import loss_curve_png, markdown_image
from driftloop.training.data import TrainingDataError
from driftloop.training.loop import NonFiniteLossError
from driftloop.training.run import train_adapter
from resources.dvc import DvcStore
from resources.models import ModelCatalog
from resources.lineage import Lineage
from resources.registry import ModelRegistry

stage = Stage()


class LoraAdapterConfig(dg.Config):
    rank: int = Field(default=8, ge=1, le=256)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default=["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1)
    learning_rate: float = Field(default=2e-4, gt=0.0, le=1.0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(default=3, ge=0)
    epochs: int = Field(default=1, ge=1)
    max_steps: int = Field(default=24, ge=0, description="0 trains the full epochs; the default keeps a CPU demo to minutes.")
    max_seq_length: int = Field(default=1024, ge=32)
    batch_size: int = Field(default=2, ge=1, description="Examples per step at max_seq_length; shorter examples pack more per batch.")
    gradient_accumulation: int = Field(default=1, ge=1)
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    checkpoint_every: int = Field(default=8, ge=1)
    lean_activations: bool = Field(default=True, description="Recompute RMSNorm/SwiGLU intermediates in backward: less memory, same gradients.")
    micro_batch_tokens: int = Field(default=0, ge=0, description="Split each batch into forward passes of at most this many tokens; 0: 512 on CPU in fp32, 1024 on CPU in bf16, whole batch on GPU.")
    max_examples: int = Field(default=0, ge=0, description="0: every example; otherwise a seeded sample.")
    min_examples: int = Field(default=8, ge=1)
    long_examples: Literal["error", "skip"] = Field(default="skip", description="Examples over max_seq_length: fail, or skip and report them.")

    @model_validator(mode="after")
    def _warmup_below_steps(self):
        if self.warmup_steps and self.max_steps and self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps})")
        return self


@stage.asset(key=BASE_MODEL, group_name="training", kinds={"pytorch", "transformers"}, owners=OWNERS, code_version="1", tags={"stage": "training"})
def base_model(context: dg.AssetExecutionContext, models: ModelCatalog) -> dg.MaterializeResult:
    """The base generator, resolved from the catalog: a packaged GGUF is converted once
    to a cached safetensors copy; a local directory or cached hub id is used as is. Its
    weights' content hash is the data version."""
    try:
        base = models.base_model()
    except FileNotFoundError as err:
        raise dg.Failure(description=str(err)) from err
    size = sum(p.stat().st_size for p in Path(base.path).glob("*.safetensors")) if Path(base.path).is_dir() else 0
    context.log.info(f"base model {base.name} at {base.path} (version {base.version})")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(base.version),
        metadata={
            "model": dg.MetadataValue.text(base.name), "version": dg.MetadataValue.text(base.version),
            "path": dg.MetadataValue.path(base.path), "source": dg.MetadataValue.text(base.source),
            "bytes": dg.MetadataValue.int(size), "architecture": json_meta(model_summary(base.path)),
        },
    )


@stage.asset(
    key=LORA_ADAPTER, deps=[BASE_MODEL, INSTRUCTION_DATASET], group_name="training", kinds={"pytorch", "peft"}, owners=OWNERS,
    code_version="1", tags={"stage": "training", "driftloop/gpu": "preferred"}, op_tags=GPU_POD,
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5),
    # The weekly retrain (when on) keeps the adapter under 8 days old; older means it stopped.
    freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(days=8), warn_window=timedelta(days=7, hours=6)),
)
def lora_adapter(
    context: dg.AssetExecutionContext, config: LoraAdapterConfig, dvc: DvcStore, models: ModelCatalog, model_registry: ModelRegistry
) -> dg.MaterializeResult:
    """A LoRA adapter trained with peft on the instruction dataset, checkpointed every
    N steps (a retried run resumes), then stored in the model registry under a version
    derived from its weights, with its full lineage."""
    base = models.base_model()
    dataset = dvc.version("instruction_dataset")
    examples = load_dataset(dvc, "instruction_dataset")
    try:
        with measured() as energy:
            trained = train_adapter(base, dataset.md5, examples, config.model_dump(), model_registry.registry(),
                                    device=resolve_device(models.device), run_id=context.run.run_id, log=context.log)
    except TrainingDataError as err:
        raise dg.Failure(description=f"training/lora_adapter: {err}") from err
    except (NonFiniteLossError, ValueError) as err:
        raise dg.Failure(description=f"training/lora_adapter: {err}; no adapter was saved") from err
    adapter, result = trained.adapter, trained.training
    png = loss_curve_png([h.step for h in result.history], [h.loss for h in result.history], f"{adapter.version}")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(adapter.version),
        metadata={
            "adapter_version": dg.MetadataValue.text(adapter.version),
            "path": dg.MetadataValue.path(str(adapter.path)),
            "loss_curve": dg.MetadataValue.md(markdown_image(png, "training loss")),
            "final_loss": dg.MetadataValue.float(round(result.final_loss, 4)),
            "best_loss": dg.MetadataValue.float(round(result.best_loss, 4)),
            "tokens_per_second": dg.MetadataValue.float(round(result.tokens_per_second, 1)),
            "tokens_seen": dg.MetadataValue.int(result.tokens_seen),
            "train_seconds": dg.MetadataValue.float(round(result.seconds, 1)),
            "trainable_params": dg.MetadataValue.int(result.trainable_params),
            "total_params": dg.MetadataValue.int(result.total_params),
            "resumed_from_step": dg.MetadataValue.int(result.resumed_from_step),
            "adapter_bytes": dg.MetadataValue.int(trained.adapter_bytes),
            "lineage": json_meta(trained.lineage),
            **energy_metadata(energy),
        },
    )


def build(lineage: Lineage | None = None, config: dict[str, dict] | None = None) -> list[dg.AssetsDefinition]:
    built = stage.build(lineage or Lineage(), config)
    return [built["base_model"], built["lora_adapter"]]


training_assets = build()
base_model, lora_adapter = training_assets
