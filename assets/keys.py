"""Every asset's key in one place, so a stage can depend on a later stage's asset
(the training examples on the vector index) without the modules importing each other."""

import dagster as dg

SOURCE_DOCUMENTS = dg.AssetKey(["data", "source_documents"])
QA_PAIRS = dg.AssetKey(["data", "qa_pairs"])
INSTRUCTION_DATASET = dg.AssetKey(["data", "instruction_dataset"])
CHUNKS = dg.AssetKey(["retrieval", "chunks"])
EMBEDDINGS = dg.AssetKey(["retrieval", "embeddings"])
VECTOR_INDEX = dg.AssetKey(["retrieval", "vector_index"])
BASE_MODEL = dg.AssetKey(["training", "base_model"])
LORA_ADAPTER = dg.AssetKey(["training", "lora_adapter"])
EVAL_REPORT = dg.AssetKey(["evaluation", "eval_report"])
CHAMPION = dg.AssetKey(["evaluation", "champion"])
BENTO = dg.AssetKey(["serving", "bento"])
DEPLOYMENT = dg.AssetKey(["serving", "deployment"])
SHADOW = dg.AssetKey(["serving", "shadow"])
CANARY = dg.AssetKey(["serving", "canary"])
ROUTER = dg.AssetKey(["serving", "router"])
INFERENCE_LOG = dg.AssetKey(["monitoring", "inference_log"])
DRIFT_REPORT = dg.AssetKey(["monitoring", "drift_report"])
