"""Training, evaluation and export of streamgenre's genre models (``python -m training.train``).

Torch is imported only inside this package (``training.cnn``, ``training.train``); the daemon
never imports it. Features always come from :mod:`streamgenre.model.features`.
"""
