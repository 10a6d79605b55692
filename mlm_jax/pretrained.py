"""A pre-training run's checkpoint, loaded for use: config, tokenizer and
parameters, on one device, for evaluation, fill-mask and fine-tuning.

  model = pretrained.load("/tmp/mlm_smoke", "best")   # or "latest", 800
  model.params["bert"]      # the encoder downstream tasks start from

A workdir written by `train.train_and_evaluate` holds `checkpoints/<step>`
(the latest few), `best/<step>` (the lowest held-out loss), the tokenizer
(`tokenizer.model`) and the config each checkpoint was written with. Every
objective keeps the encoder that downstream uses at `params['bert']` (for
ELECTRA, the discriminator's).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import jax
import ml_collections

from mlm_jax import checkpoint as ckpt_lib
from mlm_jax import config as config_lib
from mlm_jax import step as step_lib
from mlm_jax import tokenizer as tokenizer_lib
from mlm_jax.objectives import base

# Workdir layout (train.py writes it).
CHECKPOINTS, BEST, TOKENIZER = "checkpoints", "best", "tokenizer.model"
WHICH_HELP = ("'latest', 'best' (the lowest held-out loss) or a step number")


class PretrainedError(config_lib.ConfigError):
  """A checkpoint that cannot be used; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Pretrained:
  config: ml_collections.ConfigDict  # the run's config, as checkpointed
  objective: base.Objective
  params: Any  # the objective's parameters (encoder at params['bert'])
  tokenizer: tokenizer_lib.Tokenizer
  step: int
  path: pathlib.Path  # the step directory

  @property
  def encoder_params(self) -> Any:
    return self.params["bert"]


def resolve(workdir: str | os.PathLike, which: str | int = "latest"
            ) -> tuple[pathlib.Path, int]:
  """(checkpoint folder, step) that `which` names in a workdir; one-line
  errors for a missing workdir, checkpoint or step."""
  root = pathlib.Path(workdir).expanduser()
  if not root.is_dir():
    raise PretrainedError(
        f"{root} does not exist or is not a directory; give the --workdir "
        "of a pre-training run (experiments/pretrain.py).")
  which = str(which)
  if which not in ("latest", "best") and not which.isdigit():
    raise PretrainedError(f"unknown checkpoint {which!r}; use {WHICH_HELP}.")
  folders = [root / BEST] if which == "best" else [root / CHECKPOINTS]
  if which.isdigit():
    folders.append(root / BEST)  # the best step may be kept only there
  steps = {}
  for folder in folders:
    for p in folder.iterdir() if folder.is_dir() else []:
      if p.name.isdigit() and (p / "state").is_dir():
        steps.setdefault(int(p.name), folder)
  if not steps and (root / "results.json").exists():
    raise PretrainedError(
        f"{root} is a fine-tuning workdir, not a pre-training one; give the "
        "--workdir of experiments/pretrain.py.")
  if not steps:
    what = ("no best checkpoint (it is kept from the first evaluation on, "
            "by runs of this version)" if which == "best"
            else "no checkpoint")
    raise PretrainedError(
        f"{root} holds {what}; give the --workdir of a pre-training run "
        "that has written one, or another checkpoint "
        f"({WHICH_HELP}).")
  if which.isdigit():
    if int(which) not in steps:
      raise PretrainedError(
          f"{root} has no checkpoint at step {which}; it has steps "
          f"{', '.join(map(str, sorted(steps)))}.")
    step = int(which)
  else:
    step = max(steps)
  return steps[step], step


def load(workdir: str | os.PathLike, which: str | int = "latest"
         ) -> Pretrained:
  """The parameters, config and tokenizer of a checkpoint of `workdir`."""
  folder, step = resolve(workdir, which)
  root = folder.parent
  tokenizer_path = root / TOKENIZER
  if not tokenizer_path.is_file():
    raise PretrainedError(
        f"{root} has no {TOKENIZER}, so its token ids cannot be read; copy "
        "the tokenizer of the run that wrote it there.")
  tokenizer = tokenizer_lib.Tokenizer.load(tokenizer_path)
  with ckpt_lib.Checkpointer(folder, save_interval_steps=1, max_to_keep=None,
                             async_save=False) as checkpointer:
    config = ml_collections.ConfigDict(
        checkpointer.restore_config(step))
    if tokenizer.vocab_size != config.vocab_size:
      raise PretrainedError(
          f"{tokenizer_path} has {tokenizer.vocab_size} pieces but the "
          f"checkpoint's model has {config.vocab_size}; the tokenizer is "
          "not the one this run was trained with.")
    task = _task(config, tokenizer)
    abstract = _abstract_state(task, config.data.seq_len)
    problems = checkpointer.mismatch(step, abstract)
    if problems:
      raise PretrainedError(
          f"{folder / str(step)} does not hold the model its config "
          f"describes ({problems[0]}; {len(problems)} differences): it was "
          "written by another version or edited; use another checkpoint or "
          "run.")
    try:
      restored = checkpointer.restore(abstract, step=step)
    except ckpt_lib.CheckpointRestoreError as e:
      raise PretrainedError(
          f"{folder / str(step)} cannot be read ({str(e)[:300]}); use "
          "another checkpoint ('latest', 'best' or a step).") from None
  return Pretrained(config=config, objective=task.objective,
                    params=restored.state.params, tokenizer=tokenizer,
                    step=step, path=folder / str(step))


def _task(config: ml_collections.ConfigDict,
          tokenizer: tokenizer_lib.Tokenizer) -> step_lib.Task:
  from mlm_jax import train  # the optimizer's state shapes come with it
  return train.build_task(config, tokenizer.word_starts())


def _abstract_state(task: step_lib.Task, seq_len: int):
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  shapes = jax.eval_shape(lambda: step_lib.init_state(task, seq_len))
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      shapes)
