from pathlib import Path

import pytest

from lakehouse.config import load_config
from lakehouse.errors import ConfigError


def _conf_dir(tmp_path: Path, base: str, local: str | None = None) -> Path:
    (tmp_path / "base").mkdir()
    (tmp_path / "local").mkdir()
    (tmp_path / "base" / "a.yml").write_text(base)
    if local is not None:
        (tmp_path / "local" / "a.yml").write_text(local)
    return tmp_path


def test_layers_apply_in_order(tmp_path):
    conf = _conf_dir(tmp_path, "home: /x\nspark:\n  shuffle_partitions: 3\n  master: local[1]\n",
                     "spark:\n  shuffle_partitions: 5\n")
    cfg = load_config(["spark.app_name=cli"], conf_dir=conf,
                      environ={"LAKEFORGE_SPARK__MASTER": "local[2]", "LAKEFORGE_HOME": "/y",
                               "LAKEFORGE_PYTHON": "python3.11"})   # set-up's, not config
    assert cfg.spark.shuffle_partitions == 5          # local beats base
    assert cfg.spark.master == "local[2]"             # environment beats files
    assert cfg.spark.app_name == "cli"                # --set beats everything
    assert cfg.home == Path("/y")
    assert cfg.warehouse_dir == "/y/warehouse"              # the lake is the home by default


def test_relative_home_is_taken_from_project_root(tmp_path):
    cfg = load_config(conf_dir=_conf_dir(tmp_path, "home: somewhere\n"), environ={})
    assert cfg.home.is_absolute() and cfg.home.name == "somewhere"


def test_unknown_key_is_named(tmp_path):
    conf = _conf_dir(tmp_path, "spark:\n  mastr: local\n")
    with pytest.raises(ConfigError, match="spark.mastr"):
        load_config(conf_dir=conf, environ={})


def test_wrong_type_is_named(tmp_path):
    conf = _conf_dir(tmp_path, "home: /x\n")
    with pytest.raises(ConfigError, match=r"spark.shuffle_partitions='many'.*integer"):
        load_config(["spark.shuffle_partitions=many"], conf_dir=conf, environ={})


def test_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(["spark.master"], conf_dir=_conf_dir(tmp_path, "home: /x\n"), environ={})


def test_invalid_yaml_names_file(tmp_path):
    conf = _conf_dir(tmp_path, "spark: [unclosed\n")
    with pytest.raises(ConfigError, match="a.yml"):
        load_config(conf_dir=conf, environ={})


def test_project_config_loads():
    cfg = load_config(environ={})
    assert cfg.catalog.database == "lakeforge"
    assert cfg.maintain.vacuum_retention_hours >= 168



def test_an_empty_value_empties_a_string_setting_and_is_no_number(tmp_path):
    conf = _conf_dir(tmp_path, "spark:\n  java_options: -Xss4m\n")
    cfg = load_config(conf_dir=conf, environ={"LAKEFORGE_SPARK__JAVA_OPTIONS": ""})
    assert cfg.spark.java_options == ""
    with pytest.raises(ConfigError, match=r"spark.shuffle_partitions=''.*integer"):
        load_config(["spark.shuffle_partitions="], conf_dir=conf, environ={})


def test_an_entry_overriding_a_bundled_one_is_named_with_its_file(tmp_path):
    entry = "  {name}:\n    source: {{table: sales.{name}}}\n    silver: {{keys: [id]}}\n"
    base = "datasets:\n" + entry.format(name="orders") + entry.format(name="stock")
    conf = _conf_dir(tmp_path, base, "datasets:\n  orders:\n    description: mine\n")
    mine = tmp_path / "mine"  # a folder of the user's own entries
    mine.mkdir()
    (mine / "extra.yml").write_text("datasets:\n" + entry.format(name="stock")
                                    + entry.format(name="fresh"))
    cfg = load_config(conf_dir=conf, environ={"LAKEFORGE_CATALOG__DATASET_DIRS": f"[{mine}]"})
    assert cfg.overrides == {"orders": str(conf / "local" / "a.yml"),
                             "stock": str(mine / "extra.yml")}
    assert cfg.datasets["orders"].description == "mine"
    assert cfg.datasets["orders"].source.table == "sales.orders"     # the rest stays
