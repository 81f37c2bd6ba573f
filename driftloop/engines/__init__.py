"""Generation engines other than the transformers one driftloop serves with: what another
engine needs from the lineage's artifacts (today, llama.cpp's LoRA GGUF of an adapter)."""
