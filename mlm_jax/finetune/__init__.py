"""Fine-tuning: downstream tasks on a pre-trained encoder."""
