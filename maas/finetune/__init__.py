"""Fine-tuning data, tokenization and evaluation for chat models (jobs.finetune trains)."""
