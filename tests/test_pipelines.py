"""Pipeline definitions and `lakeforge run`: the steps both the CLI and Airflow run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from jobs.cli import build_parser, main
from jobs.pipeline import run_pipeline
from lakehouse.config import load_config
from lakehouse.errors import ConfigError
from lakehouse.featuresets import feature_sets
from lakehouse.submit import submit_command
from pipelines.definitions import STEP_NAMES, get_pipeline, load_pipelines

EXPECTED = {"breast_cancer_mlp", "flights_mlp", "diamonds_mlp", "fashion_mnist_cnn",
            "corpus_word2vec",
            "us_employment_deepar", "mitdb_rcf"}


def _write(tmp_path: Path, pipelines: dict, defaults: dict | None = None) -> Path:
    path = tmp_path / "pipelines.yml"
    path.write_text(yaml.safe_dump({"defaults": defaults or {}, "pipelines": pipelines}))
    return path


def test_shipped_definitions_cover_every_use_case_with_valid_steps():
    pipelines = load_pipelines()
    assert set(pipelines) == EXPECTED
    parser = build_parser()
    for name, p in pipelines.items():
        assert set(p.sources) <= set(load_config(environ={}).datasets), name
        assert p.predictions == f"predictions_{p.family}" and p.model == name
        steps = p.steps("b7")
        assert tuple(s.name for s in steps) == STEP_NAMES
        for step in steps:   # every step parses as the lakeforge command it stands for
            args = parser.parse_args([step.job, *step.args])
            assert args.command == step.job
        ingest = parser.parse_args([steps[0].job, *steps[0].args])
        assert (ingest.sources, ingest.batch) == (list(p.sources), "b7")
        train = parser.parse_args([steps[3].job, *steps[3].args])
        assert (train.family, train.dataset, train.name) == (p.family, p.features, name)
        assert dict(kv.split("=", 1) for kv in train.params).keys() == p.params.keys()
    # The tabular and image pipelines build feature sets the lakehouse knows.
    known = feature_sets(load_config(environ={}))
    for name in ("breast_cancer_mlp", "flights_mlp", "diamonds_mlp", "fashion_mnist_cnn"):
        assert pipelines[name].features in known


def test_every_pipeline_trains_its_family_on_a_feature_set_of_its_kind():
    from models.family import get_family

    cfg = load_config(environ={})
    sets = feature_sets(cfg)
    for p in load_pipelines().values():
        family = get_family(p.family)
        kind, entry = sets[p.features]
        assert kind.name == family.kind, p.name
        if entry is not None:
            assert entry.kind == family.kind, p.name


class _Called(Exception):
    """Raised by a recording stand-in once the call it stands in for is recorded."""


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_in_process_steps_call_what_the_command_lines_call(monkeypatch, name):
    """`lakeforge run` calls each library function with the arguments that the step's
    command line (what Airflow submits) gives the same function through the CLI."""
    import inspect

    import jobs.cli as cli
    import jobs.pipeline as runner

    calls: list[tuple[str, dict]] = []

    def recorder(fn):
        def record(*args, **kwargs):
            bound = inspect.signature(fn).bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = {k: v for k, v in bound.arguments.items() if k not in ("spark", "cfg")}
            calls.append((fn.__name__, {k: list(v) if isinstance(v, tuple) else v
                                        for k, v in arguments.items()}))
            raise _Called
        return record

    import lakehouse.curate
    import lakehouse.featuresets
    import lakehouse.stream
    import models.runner
    import models.scoring
    for module, attr in [(lakehouse.stream, "ingest_sources"), (lakehouse.curate, "curate"),
                         (lakehouse.featuresets, "build_features"), (models.runner, "train"),
                         (models.scoring, "score")]:
        stand_in = recorder(getattr(module, attr))
        monkeypatch.setattr(module, attr, stand_in)      # what the CLI imports when it runs
        monkeypatch.setattr(runner, attr, stand_in)      # what the runner imported
    pipeline = get_pipeline(name)
    cfg = load_config(environ={})
    parser = build_parser()
    for step in pipeline.steps("b9"):
        with pytest.raises(_Called):
            runner.STEP_FUNCTIONS[step.name](None, cfg, pipeline, "b9")
        with pytest.raises(_Called):
            cli.COMMANDS[step.job](None, cfg, parser.parse_args([step.job, *step.args]))
        in_process, command_line = calls[-2:]
        assert in_process == command_line, step.name
    assert [c[0] for c in calls[::2]] == ["ingest_sources", "curate", "build_features", "train",
                                          "score"]


def test_params_reach_the_job_as_the_values_written():
    from jobs.cli import _parse_params

    p = get_pipeline("flights_mlp")
    train = build_parser().parse_args(["train", *p.steps("b")[3].args])
    assert _parse_params(train.params) == p.params


@pytest.mark.parametrize(("body", "message"), [
    ({"sources": ["wine"], "features": "wine", "family": "mlp", "epochs": 3},
     "pipeline 'p' in .*: unknown key 'epochs'"),
    ({"sources": ["wine"], "family": "mlp"}, "pipeline 'p' in .*: 'features' is required"),
    ({"sources": "wine", "features": "wine", "family": "mlp"},
     r"pipeline 'p' in .*: sources='wine' has the wrong type"),
    ({"sources": ["wine"], "features": "wine", "family": "svm"},
     "pipeline 'p' in .*: unknown family 'svm'"),
    ({"sources": ["wine"], "features": "wine", "family": "mlp", "predictions": "predictions_cnn"},
     "predictions='predictions_cnn', but a mlp model writes predictions_mlp"),
])
def test_bad_definitions_name_the_pipeline_and_key(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message):
        load_pipelines(_write(tmp_path, {"p": body}))


def test_missing_file_and_unknown_pipeline_are_named(tmp_path):
    with pytest.raises(ConfigError, match="nosuch.yml cannot be read"):
        load_pipelines(tmp_path / "nosuch.yml")
    with pytest.raises(ConfigError, match="unknown pipeline 'nope'; pipelines: breast_cancer_mlp"):
        get_pipeline("nope")


def test_submit_settings_for_schedulers_carry_code_config_and_master(tmp_path, capsys):
    code_zip = tmp_path / "lakeforge.zip"
    code_zip.write_bytes(b"PK")
    assert main(["submit", "--print-json", "--master", "spark://127.0.0.1:7077",
                 "--py-files", str(code_zip), "--set", f"home={tmp_path}", "train"]) == 0
    settings = json.loads(capsys.readouterr().out)
    assert settings["master"] == "spark://127.0.0.1:7077"
    assert settings["application"].endswith("jobs/train.py")
    assert settings["conf"]["spark.submit.pyFiles"] == str(code_zip)
    assert settings["conf"]["spark.sql.warehouse.dir"] == str(tmp_path / "warehouse")
    assert settings["env"]["LAKEFORGE_HOME"] == str(tmp_path)
    assert Path(settings["env"]["LAKEFORGE_CONF_DIR"], "base", "lakeforge.yml").is_file()
    assert Path(settings["spark_submit"]).name == "spark-submit"
    cmd = submit_command(load_config([f"home={tmp_path}"], environ={}), "ingest", ["wine"],
                         [str(code_zip)])
    assert cmd[cmd.index("--py-files") + 1] == str(code_zip)
    with pytest.raises(ConfigError, match="--py-files .*missing.zip does not exist; build it"):
        submit_command(load_config([], environ={}), "ingest", [], [str(tmp_path / "missing.zip")])


def test_cli_run_names_unknown_pipeline(spark, cfg, capsys):
    code = main(["run", "nope", "--set", f"home={cfg.home}",
                 "--set", f"catalog.database={cfg.catalog.database}"])
    assert code == 2
    assert "unknown pipeline 'nope'" in capsys.readouterr().err


def test_an_unknown_first_step_is_named():
    with pytest.raises(ConfigError, match="unknown pipeline step 'fit'; steps: ingest, curate"):
        run_pipeline(None, load_config(environ={}), "wine_mlp", "b1", start_at="fit")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "wine_mlp", "--from", "fit"])
