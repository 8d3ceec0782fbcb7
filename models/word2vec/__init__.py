"""word2vec family: skip-gram (or CBOW) with negative sampling on Horovod ranks.

* Features (:mod:`lakehouse.featuresets.text`): Spark tokenises ``silver_documents`` into
  ``gold_word2vec_vocab`` and ``gold_word2vec_corpus`` (``lakeforge features corpus``;
  parameters ``corpora``, ``min_count`` (5), ``max_sentence_length`` (1000),
  ``partitions``).
* Training (:mod:`models.word2vec.train`, :mod:`models.word2vec.rank`): TensorFlow
  SGD with sparse updates per rank, local SGD across ranks.
* Evaluation (:mod:`models.word2vec.evaluate`): WordSim-353 / SimLex-999 Spearman,
  Google analogies, nearest neighbours.
* Scoring (:mod:`models.word2vec.scoring`): ``predictions_word2vec``, one row per word.

Training parameters (gensim's defaults where gensim has one): ``dim`` 100,
``window`` 5, ``negative`` 5, ``sample`` 1e-3, ``alpha`` 0.025 -> ``min_alpha``
0.0001, ``epochs`` 5, ``sg`` 1 (0: CBOW); ``batch_pairs`` pairs per SGD step,
``block_batches`` steps per compiled call, ``sync_words`` words per rank between
synchronisations, and ``neighbours``, the k of scoring. On the demo corpus
(1.6 M words, 2 cores) the defaults train 5 epochs in about 25 s.
"""

from models.family import Family
from models.word2vec.params import Word2VecParams
from models.word2vec.scoring import PREDICTION_FIELDS, predict_word2vec, score_words
from models.word2vec.train import Word2VecTrainer

FAMILY = Family(
    name="word2vec",
    kind="text",
    params=Word2VecParams,
    trainer=Word2VecTrainer(),
    scorer=score_words,
    predictor=predict_word2vec,
    prediction_fields=PREDICTION_FIELDS,
    prediction_keys=("word",),
)
