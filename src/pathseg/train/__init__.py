"""Training: data loading and augmentation, losses, and the training loops behind `pathseg train`."""
