"""The Keras classifier path shared by the MLP and CNN families.

Both train on a lakehouse gold feature table (``row_id``, ``split``, ``features``,
``label``) built from a declared tabular or image data set, and differ only in their
network (``models/mlp/network.py``, ``models/cnn/network.py``) and parameters:
:mod:`models.classifier.train` (the trainer), :mod:`models.classifier.rank` (each
Horovod rank), :mod:`models.classifier.scoring` (batch scoring).
"""
