"""Random Cut Forest family: anomaly scores of shingled streams (robust RCF, vectorised)."""

from models.family import Family
from models.rcf.scoring import PREDICTION_FIELDS, score_rcf
from models.rcf.shingles import build_shingles
from models.rcf.train import train_rcf

FAMILY = Family(
    name="rcf",
    kind="stream",
    defaults={"num_trees": 100, "num_samples_per_tree": 256, "shingle_size": 8,
              "threshold_sigma": 3.0, "transform": "level_diff", "max_depth": 0},
    normalise=False,
    trainer=train_rcf,
    scorer=score_rcf,
    features=build_shingles,
    prediction_fields=PREDICTION_FIELDS,
    prediction_keys=("stream_id", "t"),
)
