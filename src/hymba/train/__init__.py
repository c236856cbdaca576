"""Training and fine-tuning: data packing, AdamW + WSD/cosine, atomic checkpoints, the loop.

``train(TrainArgs(...))`` is the Python entry point; ``hymba train`` is the command line.
"""

from .data import DataError
from .trainer import TrainArgs, TrainError, train

__all__ = ["DataError", "TrainArgs", "TrainError", "train"]
