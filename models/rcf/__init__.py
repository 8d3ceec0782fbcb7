"""Random Cut Forest family: anomaly scores of shingled streams (robust RCF, vectorised)."""

from models.family import Family
from models.rcf.params import RcfParams
from models.rcf.scoring import LATE_FIELDS, PREDICTION_FIELDS, predict_rcf, score_rcf
from models.rcf.train import RcfTrainer

FAMILY = Family(
    name="rcf",
    kind="stream",
    params=RcfParams,
    trainer=RcfTrainer(),
    scorer=score_rcf,
    predictor=predict_rcf,
    prediction_fields=PREDICTION_FIELDS,
    prediction_late_fields=LATE_FIELDS,
    prediction_keys=("stream_id", "t"),
)
