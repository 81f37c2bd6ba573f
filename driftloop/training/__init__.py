"""LoRA fine-tuning: tokenised chat data, length-grouped batches, a resumable loop."""
