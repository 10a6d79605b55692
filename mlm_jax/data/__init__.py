"""Corpora, tokenized and packed examples, and the host-side loader."""
