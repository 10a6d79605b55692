"""The Hugging Face peers of the step benchmark.

Most tests need the `bench` extra (transformers, torch) and skip without it,
as in CI; host masking and the missing-package error need neither.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from configs_loader import load_config  # noqa: E402
from mlm_jax import hostenv  # noqa: E402
from mlm_jax import synthetic  # noqa: E402
from mlm_jax import tokenizer as tok  # noqa: E402
from mlm_jax.bench import flax_recipe  # noqa: E402
from mlm_jax.bench import hf  # noqa: E402
from mlm_jax.bench import peer_flax  # noqa: E402
from mlm_jax.bench import peer_torch  # noqa: E402
from mlm_jax.bench import peers  # noqa: E402
from mlm_jax.bench import timing  # noqa: E402


def tiny(**optim):
  cfg = load_config("size=tiny,runlocal")
  cfg.model.pre_layer_norm = False  # Hugging Face's BERT is post-LN
  cfg.model.position_encoding = "learned"  # ... with position embeddings
  cfg.vocab_size, cfg.train.batch_size, cfg.data.seq_len = 512, 4, 32
  m = cfg.model
  m.num_layers, m.hidden_size, m.num_heads, m.intermediate_size = 2, 64, 2, 256
  cfg.optim.update(optim)
  return cfg


def needs(*modules):
  for module in ("flax", "transformers", *modules):
    pytest.importorskip(module)


def learnable_tokens(cfg):
  """Rows of a fixed cycle of ids: a masked id follows from its position."""
  b, l = cfg.train.batch_size, cfg.data.seq_len
  row = tok.NUM_SPECIAL_TOKENS + np.arange(l, dtype=np.int32) % 20
  tokens = np.tile(row, (b, 1))
  tokens[:, 0], tokens[:, -1] = tok.CLS_ID, tok.SEP_ID
  return tokens


def check_masking(tokens, input_ids, labels, cfg):
  """Selection rate and the [MASK]/random/kept split, each within 5 sigma."""
  special = tokens < tok.NUM_SPECIAL_TOKENS
  selected = labels != -100
  assert not selected[special].any()
  assert (labels[selected] == tokens[selected]).all()
  assert (input_ids[~selected] == tokens[~selected]).all()
  k, v = cfg.masking, cfg.vocab_size

  def within_5_sigma(hits, n, p):
    assert abs(hits / n - p) <= 5 * math.sqrt(p * (1 - p) / n), (hits, n, p)

  eligible = int((~special).sum())
  within_5_sigma(int(selected.sum()), eligible, k.rate)
  n = int(selected.sum())
  got, original = input_ids[selected], tokens[selected]
  random_share = k.random_prob / (1 - k.mask_prob)
  other = (1 - k.mask_prob) * random_share  # a random id: 1/v is [MASK] ...
  within_5_sigma(int((got == tok.MASK_ID).sum()), n, k.mask_prob + other / v)
  # ... and 1/v is the original id.
  kept = (1 - k.mask_prob) * (1 - random_share) + other / v
  within_5_sigma(int((got == original).sum()), n, kept)


def test_host_masking_matches_run_mlm_flax_rates():
  cfg = tiny()
  cfg.train.batch_size = 2000  # 60,000 maskable positions
  tokens = synthetic.batch(cfg)["tokens"]
  before = tokens.copy()
  input_ids, labels = flax_recipe.mask_tokens(
      tokens, hf.special_tokens_mask(tokens), cfg,
      np.random.RandomState(0))
  assert (tokens == before).all()
  assert input_ids.shape == labels.shape == tokens.shape
  check_masking(tokens, input_ids, labels, cfg)


def test_module_imports_without_the_peer_packages():
  code = ("import sys; sys.modules['transformers'] = None; "
          "sys.modules['torch'] = None; "
          "import mlm_jax.bench.peers, mlm_jax.bench.report")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, check=False)
  assert proc.returncode == 0, proc.stderr


def test_missing_packages_name_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "transformers", None)
  with pytest.raises(hf.MissingPeerError,
                     match=r"'transformers'.*pip install -e '\.\[bench\]'"):
    peer_flax.time_hf_flax(tiny())
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(hf.MissingPeerError, match=r"'torch'.*\.\[bench\]"):
    peer_torch.time_hf_torch(tiny())
  # A transformers without Flax models (5.x) is named as such.
  monkeypatch.setitem(sys.modules, "transformers",
                      types.SimpleNamespace(__version__="5.0.0"))
  with pytest.raises(hf.MissingPeerError, match=r"5\.0\.0 has no Flax"):
    peer_flax.time_hf_flax(tiny())


def test_bert_config_maps_every_field():
  needs()
  cfg = tiny()
  cfg.model.dropout, cfg.model.attention_dropout = 0.1, 0.2
  b = hf.bert_config(cfg)
  assert (b.vocab_size, b.num_hidden_layers, b.hidden_size,
          b.num_attention_heads, b.intermediate_size) == (512, 2, 64, 2, 256)
  assert (b.max_position_embeddings, b.type_vocab_size) == (512, 2)
  assert (b.hidden_dropout_prob, b.attention_probs_dropout_prob) == (0.1, 0.2)
  assert (b.layer_norm_eps, b.initializer_range) == (1e-12, 0.02)
  assert b.hidden_act == "gelu"


def test_flax_step_learns_a_repeated_batch():
  needs()
  cfg = tiny(lr=2e-3, warmup_steps=2)
  cfg.model.dropout = cfg.model.attention_dropout = 0.0
  state, train_step, dropout_rng = peer_flax.build_hf_flax(cfg)
  tokens = learnable_tokens(cfg)
  special = hf.special_tokens_mask(tokens)
  rng = np.random.RandomState(0)
  losses = []
  for _ in range(20):
    batch = peer_flax.flax_batch(tokens, special, cfg, rng)
    state, metrics, dropout_rng = train_step(state, batch, dropout_rng)
    losses.append(float(metrics["loss"]))
  assert losses[0] == pytest.approx(math.log(cfg.vocab_size), abs=0.3)
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0, losses
  assert int(state.step) == 20


def test_torch_step_learns_a_repeated_batch():
  needs("torch")
  import torch  # pylint: disable=import-outside-toplevel
  cfg = tiny(lr=2e-3, warmup_steps=2)
  cfg.model.dropout = cfg.model.attention_dropout = 0.0
  peer = peer_torch.build_hf_torch(cfg)
  # Learning, not timing: one thread is immune to a core another job holds
  # (OpenMP's barriers make 2 threads on 1 free core ~100x slower).
  torch.set_num_threads(1)
  tokens = torch.from_numpy(learnable_tokens(cfg).astype(np.int64))
  special = torch.from_numpy(hf.special_tokens_mask(tokens.numpy()))
  losses = [float(peer_torch.torch_train_step(
      peer, peer_torch.torch_batch(peer, tokens, special), cfg.optim.grad_clip))
            for _ in range(20)]
  assert losses[0] == pytest.approx(math.log(cfg.vocab_size), abs=0.3)
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0, losses


def test_torch_collator_masking_rates():
  needs("torch")
  import torch  # pylint: disable=import-outside-toplevel
  cfg = tiny()
  cfg.train.batch_size = 2000
  peer = peer_torch.build_hf_torch(cfg)
  tokens = torch.from_numpy(
      synthetic.batch(cfg)["tokens"].astype(np.int64))
  special = torch.from_numpy(hf.special_tokens_mask(tokens.numpy()))
  batch = peer_torch.torch_batch(peer, tokens, special)
  check_masking(tokens.numpy(), batch["input_ids"].numpy(),
                batch["labels"].numpy(), cfg)


def check_timing(t, cfg, compiled):
  assert len(t.step_times) == 3 and t.step_median in t.step_times
  tokens = cfg.train.batch_size * cfg.data.seq_len
  assert t.tokens_per_s == pytest.approx(tokens / t.step_median)
  assert t.flops_per_step == timing.flops_per_step(cfg)
  assert t.mfu == pytest.approx(t.flops_per_step / t.step_median / 1e11)
  assert (t.lower_seconds > 0 and t.compile_seconds > 0) == compiled
  assert t.peak_host_memory_gb > 0


def test_time_hf_flax_reports_consistent_figures():
  needs()
  cfg = tiny()
  check_timing(peer_flax.time_hf_flax(cfg, steps=2, repeats=3, peak_flops=1e11),
               cfg, compiled=True)


def test_time_hf_torch_reports_consistent_figures():
  needs("torch")
  cfg = tiny()
  t = peer_torch.time_hf_torch(cfg, steps=2, repeats=3, peak_flops=1e11)
  check_timing(t, cfg, compiled=False)
  assert t.lower_seconds == t.compile_seconds == 0


def resident_gb():
  with open("/proc/self/status", encoding="ascii") as f:
    return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 2**20


def test_run_in_subprocess_reports_the_childs_own_memory():
  needs("torch")
  cfg = tiny()
  # 1 GiB resident here, more than the child needs: ru_maxrss would count it.
  ballast = np.ones(2 ** 30, np.uint8)
  parent_gb = resident_gb()
  record = peers.run_in_subprocess("torch", cfg, steps=2, repeats=3,
                                   peak_flops=1e11, allocator="system")
  del ballast
  fields = {f.name for f in dataclasses.fields(timing.StepTiming)}
  assert set(record) == fields | {"kind", "allocator",
                                  "import_host_memory_gb"}
  assert record["allocator"] == "system"
  assert record["kind"] == "torch" and len(record["step_times"]) == 3
  assert 0 < record["import_host_memory_gb"] <= record["peak_host_memory_gb"]
  assert record["peak_host_memory_gb"] < parent_gb
  with pytest.raises(ValueError, match="Unknown peer"):
    peers.run_in_subprocess("tf", cfg)


def test_allocator_env_strips_or_sets_the_preload(monkeypatch):
  environ = {"LD_PRELOAD": "/a/libtcmalloc.so.4:/b/other.so",
             hostenv.MARK: "/a/libtcmalloc.so.4", "HOME": "/h"}
  assert peers.allocator_env("system", environ) == {
      "LD_PRELOAD": "/b/other.so", "HOME": "/h"}
  monkeypatch.setattr(hostenv, "find_library",
                      lambda a: f"/t/lib{a}.so")
  env = peers.allocator_env("tcmalloc", environ)
  assert env["LD_PRELOAD"] == "/t/libtcmalloc.so:/b/other.so"
  env = peers.allocator_env("jemalloc", environ)
  assert env["LD_PRELOAD"] == "/t/libjemalloc.so:/b/other.so"
  monkeypatch.setattr(hostenv, "find_library", lambda a: None)
  with pytest.raises(ValueError, match="libtcmalloc-minimal4"):
    peers.allocator_env("tcmalloc", environ)
  with pytest.raises(ValueError, match="libjemalloc2"):
    peers.allocator_env("jemalloc", environ)
  with pytest.raises(ValueError, match="pip install cmeel-mimalloc"):
    peers.allocator_env("mimalloc", environ)
  with pytest.raises(ValueError, match="use one of mimalloc, jemalloc"):
    peers.allocator_env("hoard", environ)


def test_host_pairs_make_bert_and_albert_negatives():
  from mlm_jax.bench import peer_flax_objectives as objective_peers
  cfg = tiny()
  cfg.data.packing = "pairs"
  cfg.train.batch_size = 64
  batch = synthetic.batch(cfg)
  for kind in ("nsp", "sop"):
    tokens, segments, labels = objective_peers.host_pairs(
        batch["tokens"], batch["segment_ids"], kind, 0.5,
        np.random.RandomState(0))
    assert 0 < labels.sum() < 64
    for r in range(64):
      real = tokens[r] != tok.PAD_ID
      a = tokens[r][real & (segments[r] == 0)][1:-1]
      b = tokens[r][real & (segments[r] == 1)][:-1]
      orig = batch["tokens"][r]
      cut = int(np.argmax(orig == tok.SEP_ID))
      oa, ob = orig[1:cut], orig[cut + 1:-1]
      if not labels[r]:
        assert (list(a), list(b)) == (list(oa), list(ob))
      elif kind == "sop":
        assert (list(a), list(b)) == (list(ob), list(oa))
      else:
        assert list(a) == list(oa) and list(b) != list(ob)


@pytest.mark.parametrize("objective", ["nsp", "electra", "causal_lm"])
def test_objective_peers_train_and_time(objective):
  needs()
  cfg = load_config(f"size=tiny,runlocal,objective={objective}")
  cfg.model.pre_layer_norm = False  # Hugging Face's BERT is post-LN
  cfg.model.position_encoding = "learned"  # ... with position embeddings
  cfg.vocab_size, cfg.train.batch_size, cfg.data.seq_len = 512, 4, 32
  m = cfg.model
  m.num_layers, m.hidden_size, m.num_heads, m.intermediate_size = 2, 64, 2, 256
  t = peer_flax.time_hf_flax(cfg, steps=2, repeats=3, peak_flops=1e11)
  check_timing(t, cfg, compiled=True)
  assert all(math.isfinite(x) for x in t.step_times)


def test_glue_peer_learns_a_repeated_batch():
  needs()
  from mlm_jax.bench import finetune
  from mlm_jax.bench import peer_flax_glue
  cfg = tiny(lr=2e-3, warmup_steps=2)
  cfg.model.dropout = cfg.model.attention_dropout = 0.0
  batch = finetune.host_batch(cfg)
  assert set(batch["label"]) == {0, 1}  # both classes among 4 rows
  state, step, rngs, make_batch = peer_flax_glue.build_hf_glue(cfg, batch)
  losses = []
  for _ in range(20):
    state, metrics, rngs = step(state, make_batch(), rngs)
    losses.append(float(metrics["loss"][0]))
  assert losses[0] == pytest.approx(math.log(finetune.NUM_LABELS), abs=0.3)
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
  assert int(state.step[0]) == 20


def test_glue_peer_is_timed_by_the_childs_entry_point(tmp_path):
  # peers.main is what run_in_subprocess runs in the child; in-process here.
  needs()
  from mlm_jax.bench import finetune
  cfg = tiny()
  out = tmp_path / "timing.json"
  peers.main(["flax", cfg.to_json(), f"--out={out}", "--steps=2",
              "--repeats=3", "--peak_flops=1e11", "--finetune"])
  record = json.loads(out.read_text())
  t = timing.StepTiming(**{k: record[k] for k in record if k not in (
      "kind", "allocator", "import_host_memory_gb")})
  assert len(t.step_times) == 3 and t.step_median in t.step_times
  assert t.tokens_per_s == pytest.approx(4 * 32 / t.step_median)
  # MFU counts our fine-tuning step's useful FLOPs, not the MLM step's.
  assert t.flops_per_step == timing.flops_per_step(cfg, finetune.task(cfg))
  assert t.mfu == pytest.approx(t.flops_per_step / t.step_median / 1e11)
  assert t.lower_seconds > 0 and t.compile_seconds > 0
  with pytest.raises(ValueError, match="to time fine-tuning"):
    peers.run_in_subprocess("torch", cfg, finetune=True)
