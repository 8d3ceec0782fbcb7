"""DeepAR family: one global autoregressive LSTM over a panel of series (probabilistic).

Features (``lakeforge features us_employment``) cut windows per series into
``gold_deepar_<dataset>``; training (``lakeforge train deepar --dataset
us_employment``) runs Horovod ranks over them and scores the held-out horizon
against seasonal naive and ETS; scoring (``lakeforge score deepar --model
us_employment_deepar``) forecasts past the end of every series into
``predictions_deepar``. Any series data set of the catalog trains the same way, at
any frequency from minutes to years, with optional static (categorical) and dynamic
(numeric, known ahead) covariates declared as roles (:mod:`lakehouse.featuresets.series`).
"""

from models.deepar.params import DeepArParams
from models.deepar.scoring import LATE_FIELDS, PREDICTION_FIELDS, predict_deepar, score_deepar
from models.deepar.train import DeepArTrainer
from models.family import Family

FAMILY = Family(
    name="deepar",
    kind="series",
    params=DeepArParams,
    trainer=DeepArTrainer(),
    scorer=score_deepar,
    predictor=predict_deepar,
    prediction_fields=PREDICTION_FIELDS,
    prediction_keys=("series_id", "step"),
    prediction_late_fields=LATE_FIELDS,
)
