"""The family contract: a kind, typed parameters checked on the driver, one shape each."""

import dataclasses

import pytest

from lakehouse.datasets import KINDS
from lakehouse.errors import ConfigError
from models.family import FAMILY_NAMES, families_of_kind, get_family

BAD = {   # one out-of-range value per family, and the words its message must hold
    "mlp": ({"patience": 0}, "mlp parameter patience=0: must be >= 1"),
    "cnn": ({"filters": [32, "x"]}, "cnn parameter filters=[32, 'x']: must be a list"),
    "word2vec": ({"min_alpha": 0.5}, "word2vec parameters min_alpha=0.5 and alpha=0.025"),
    "deepar": ({"likelihood": "poisson"}, "deepar parameter likelihood='poisson': must be one "
                                          "of gaussian, student_t, negbin"),
    "rcf": ({"num_samples_per_tree": 0}, "rcf parameter num_samples_per_tree=0: must be >= 1"),
}


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_each_family_has_a_kind_and_frozen_typed_parameters(name):
    family = get_family(name)
    assert family.kind in KINDS and name in families_of_kind(family.kind)
    assert dataclasses.is_dataclass(family.params)
    assert family.params.__dataclass_params__.frozen
    assert family.check_params(None) == family.defaults          # the defaults pass
    first = dataclasses.fields(family.params)[0].name
    overridden = family.check_params({first: family.defaults[first]})
    assert overridden == family.defaults
    with pytest.raises(ConfigError, match=f"unknown {name} parameter key 'nope'"):
        family.check_params({"nope": 1})
    bad, message = BAD[name]
    with pytest.raises(ConfigError) as err:
        family.check_params(bad)
    assert message in str(err.value)


def test_a_number_given_for_a_float_is_taken_and_a_string_is_named():
    mlp = get_family("mlp")
    assert mlp.check_params({"learning_rate": 1})["learning_rate"] == 1.0
    with pytest.raises(ConfigError, match="mlp parameter value learning_rate='fast': expected "
                                          "a number"):
        mlp.check_params({"learning_rate": "fast"})


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_each_family_folder_has_the_same_files_for_the_same_roles(name):
    from pathlib import Path

    import models
    from models.family import FamilyTrainer

    root = Path(models.__file__).parent
    family = get_family(name)
    own = {p.name for p in (root / name).glob("*.py")}
    shared = root / "classifier" if not (root / name / "train.py").exists() else root / name
    assert "params.py" in own and "__init__.py" in own
    assert {"train.py", "rank.py", "scoring.py"} <= {p.name for p in shared.glob("*.py")}
    assert "features.py" not in own          # gold tables are built by lakehouse.featuresets
    trainer = family.trainer
    assert isinstance(trainer, FamilyTrainer)
    rank_fn = type(trainer).rank_fn
    assert rank_fn.__module__ == f"models.{shared.name}.rank"   # picklable by reference
    assert family.scorer.__module__ == f"models.{shared.name}.scoring"
