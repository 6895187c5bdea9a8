"""deepsight: transfer learning on CIFAR-10 that puts the model and the data on trial."""

__version__ = "0.1.0"
