"""Training: one loop core (``trainer.train_loop``) under reverse-KL :func:`fit` and the by-parts trainer, the fast
GPU step, data parallelism, training by parts, pre-training on draws, and density estimation on data."""

from flowvi.training.loop import TrainConfig, TrainingDiverged, fit
from flowvi.training.pretrain import pretrain_on_draws

__all__ = ["TrainConfig", "TrainingDiverged", "fit", "pretrain_on_draws"]
