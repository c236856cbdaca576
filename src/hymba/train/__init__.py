"""Training and fine-tuning: data packing, AdamW + WSD/cosine, atomic checkpoints, the loop.

``train(TrainArgs(...))`` is the Python entry point (a run folder with checkpoints);
``train_model(model, batches, TrainArgs(...))`` trains an in-memory model on given batches and
writes nothing; ``hymba train`` is the command line.
"""

from .args import TrainArgs, TrainError, TrainInterrupted
from .data import DataError
from .step import train_model
from .trainer import train

__all__ = ["DataError", "TrainArgs", "TrainError", "TrainInterrupted", "train", "train_model"]
