"""The benchmark: the training step timed, against Hugging Face's peers.

Training never imports this package; it imports the core (step, objectives,
flops, synthetic inputs). Modules, each importing only those before it:

  timing.py       our step timed: tokens/s, compile, MFU and its kernel bound
  finetune.py     our fine-tuning step (sequence classification) timed
  objectives.py   each objective's step timed interleaved with BERT's MLM's
  hf.py           what every Hugging Face peer shares (optional import,
                  BertConfig, special-token mask)
  flax_recipe.py  transformers' run_mlm_flax.py: masking, AdamW, loss
  peer_flax_objectives.py  the Flax peers of NSP/SOP, ELECTRA, the LMs
  peer_flax.py    FlaxBertForMaskedLM, and the timing of every Flax peer
  peer_flax_glue.py  FlaxBertForSequenceClassification as run_flax_glue.py
                  trains it: the fine-tuning step's peer
  peer_torch.py   BertForMaskedLM as transformers' Trainer trains it
  peers.py        each contender timed in a process of its own
  report.py       one benchmark run: records (JSON lines), Markdown tables
"""
