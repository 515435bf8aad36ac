"""Curated chat logs to training data, LoRA training, GGUF adapters: the fine-tuning loop."""
