"""Training and fine-tuning: data packing, AdamW + WSD/cosine, atomic checkpoints, the loop.

``train(TrainArgs(...))`` is the Python entry point (a run folder with checkpoints);
``train_model(model, batches, TrainArgs(...))`` trains an in-memory model on given batches and
writes nothing; ``hymba train`` is the command line. ``TrainArgs(lora=...)`` trains LoRA
adapters (PEFT) instead of the weights; :func:`merge_lora` merges a saved adapter into its base.
"""

from .args import TrainArgs, TrainError, TrainInterrupted
from .data import DataError
from .lora import LoraError, LoraSettings, merge_lora
from .step import train_model
from .trainer import train

__all__ = ["DataError", "LoraError", "LoraSettings", "TrainArgs", "TrainError", "TrainInterrupted", "merge_lora",
           "train", "train_model"]
