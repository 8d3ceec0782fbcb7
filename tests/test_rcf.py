"""Random Cut Forest: the vectorised forest, shingling in Spark, 2-rank training, scoring."""

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import rrcf
from pyspark.sql import functions as F

from lakehouse import delta
from lakehouse.errors import ConfigError, SchemaMismatchError
from lakehouse.featuresets import build_features
from lakehouse.featuresets.stream import window_labels
from models import tracking
from models.rcf.alerts import AlertRule, alerts, point_scores
from models.rcf.forest import attribution, build_forest, codisp, merge, reservoir_samples
from models.rcf.learn import Learner, LearnSpec
from models.rcf.transform import (
    Moments,
    fit_scaling,
    scaling_from_json,
    shape_features,
)
from models.runner import train
from models.scoring import score
from tests.helpers import silver_spec, with_datasets

STREAM = "mitdb"      # a stream name the RCF family builds features for; the values are synthetic
SPIKE, SHIFT = 700, (1100, 1130)


def _stream(n: int = 1500, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A noisy sine with one spike and one level shift, labelled."""
    rng = np.random.default_rng(seed)
    value = np.sin(np.arange(n) / 15) + rng.normal(0, 0.05, n)
    label = np.zeros(n, dtype=int)
    if n > SHIFT[1]:
        value[SPIKE] += 4
        value[SHIFT[0]:SHIFT[1]] += 2
        label[SPIKE] = 1
        label[SHIFT[0]:SHIFT[1]] = 1
    return value, label


def _write_stream(spark, cfg, value, label, split="all", stream=STREAM):
    spec = silver_spec(spark, cfg, "mitdb")
    target = delta.ensure_table(spark, spec, cfg.catalog.database)
    rows = [(stream, split, int(t), float(v), int(y))
            for t, (v, y) in enumerate(zip(value, label, strict=True))]
    spark.createDataFrame(rows, spec.data_schema).write.format("delta").mode("append") \
        .saveAsTable(target)


def _shingle(values: np.ndarray, size: int) -> np.ndarray:
    return np.lib.stride_tricks.sliding_window_view(values, size)


def test_forest_structure_and_spike_scores_highest():
    value, _ = _stream()
    points = _shingle(value, 4)
    rng = np.random.default_rng(0)
    forest = build_forest(reservoir_samples(np.array_split(points, 7), 30, 128, rng), rng)
    inner = np.flatnonzero(forest.left >= 0)
    children = forest.left[inner]
    assert (forest.count[children] + forest.count[children + 1] == forest.count[inner]).all()
    assert (forest.lo[children] >= forest.lo[inner] - 1e-12).all()       # boxes nest
    assert (forest.hi[children + 1] <= forest.hi[inner] + 1e-12).all()
    assert (forest.count[:30] == 128).all()
    scores = codisp(forest, points, rng)
    spike_shingles = np.arange(SPIKE - 3, SPIKE + 1)         # every shingle holding the spike
    assert scores[spike_shingles].min() > np.quantile(scores, 0.98)


def test_scores_agree_with_rrcf_on_the_same_trees_samples():
    value, _ = _stream()
    points = _shingle(value, 4)
    rng = np.random.default_rng(1)
    samples = reservoir_samples([points], 30, 128, rng)
    probe = points[SPIKE - 60:SHIFT[1]:4]        # normal stretches, the spike and the shift
    ours = codisp(build_forest(samples, rng), probe, rng)
    trees = [rrcf.RCTree(s) for s in samples]
    theirs = []
    for p in probe:
        total = 0.0
        for tree in trees:
            tree.insert_point(p, index="q")
            total += tree.codisp("q")
            tree.forget_point("q")
        theirs.append(total / len(trees))
    assert np.corrcoef(ours, theirs)[0, 1] > 0.9
    assert 0.7 < np.mean(ours) / np.mean(theirs) < 1.4


def _depths(forest) -> np.ndarray:
    depth = np.zeros(len(forest.left), dtype=int)
    for node in range(len(forest.left)):        # parents come before their children
        if forest.left[node] >= 0:
            depth[forest.left[node]:forest.left[node] + 2] = depth[node] + 1
    return depth


def test_depth_capped_trees_stop_at_the_cap_and_score_as_random_insertion_does():
    value, _ = _stream()
    points = _shingle(value, 4)
    rng = np.random.default_rng(4)
    samples = reservoir_samples([points], 20, 128, rng)
    full, capped = build_forest(samples, rng), build_forest(samples, rng, max_depth=4)
    assert _depths(full).max() > 4 and _depths(capped).max() == 4
    leaves = capped.left < 0
    assert capped.count[leaves].max() > 1                     # capped leaves hold several points
    assert capped.count[leaves].sum() == 20 * 128             # and together every point
    inner = np.flatnonzero(capped.left >= 0)
    kids = capped.left[inner]
    assert (capped.count[kids] + capped.count[kids + 1] == capped.count[inner]).all()
    probe = points[::25]
    expected = codisp(capped, probe)
    drawn = np.mean([codisp(capped, probe, np.random.default_rng(k)) for k in range(300)], axis=0)
    assert np.allclose(expected, drawn, rtol=0.1, atol=0.3)
    assert expected[SPIKE // 25] > np.quantile(expected, 0.9)
    unlimited = [build_forest(samples, np.random.default_rng(5), cap) for cap in (None, 0)]
    assert np.array_equal(unlimited[0].left, unlimited[1].left)            # 0 means no limit


def test_attribution_sums_to_the_score_and_credits_the_dimension_that_made_it():
    value, _ = _stream()
    points = _shingle(value, 4)
    rng = np.random.default_rng(1)
    forest = build_forest(reservoir_samples([points[:600]], 25, 128, rng), rng, max_depth=6)
    probe = points[::7]
    attributed = attribution(forest, probe, chunk=50)
    assert attributed.shape == probe.shape and (attributed >= 0).all()
    assert np.abs(attributed.sum(axis=1) - codisp(forest, probe)).max() < 1e-9
    odd = points[100].copy()
    odd[2] += 5                                          # far out along dimension 2 only
    share = attribution(forest, odd[None])[0]
    assert share.argmax() == 2 and share[2] > 0.5 * share.sum()


def test_a_spike_scores_on_its_own_point_and_raises_one_alert():
    """Ranked by shingle score the spike's own point is not first (the shingles after it
    hold it too); ranked by point score it is, and it alone alerts."""
    value, _ = _stream()
    size = 4
    x = _shingle(value, size)
    scaling = fit_scaling("level_diff", Moments.of(shape_features(x[:600], "level_diff")))
    rng = np.random.default_rng(2)
    forest = build_forest(reservoir_samples([scaling.apply(x[:600])], 40, 128, rng), rng)
    attributed = attribution(forest, scaling.apply(x))
    own, alone = point_scores(attributed, scaling, size)
    t = np.arange(size - 1, len(value))                 # the newest point of each shingle
    near = (t >= SPIKE - 20) & (t < SPIKE + 20)
    assert t[near][attributed[near].sum(axis=1).argmax()] != SPIKE
    assert t[near][own[near].argmax()] == SPIKE
    assert own[t == SPIKE][0] > 1.5 * np.sort(own[near])[-2]
    fit = own[:600 - size + 1]
    rule = AlertRule.fit(fit, 4.0, 200, size - 1)
    raised, threshold, _ = alerts(own, alone, rule, rule.start())
    assert [int(v) for v in t[raised & near]] == [SPIKE]
    assert threshold[0] == pytest.approx(np.exp(np.log(fit).mean() + 4 * np.log(fit).std()))


def test_alert_thresholds_adapt_and_carry_across_batches():
    rule = AlertRule(sigma=1.0, horizon=0, log_mean=0.0, log_var=1.0, span=2)   # threshold e
    own = np.array([1.0, 5.0, 4.0, 1.0, 1.0, 3.0, 1.0, 3.0, 3.0, 1.0, 1.0, 1.0, 3.0])
    alone = np.array([1.0, 5.0, 0.5, 1.0, 1.0, 3.0, 1.0, 3.0, 3.0, 1.0, 1.0, 1.0, 3.0])
    raised, threshold, state = alerts(own, alone, rule, rule.start())
    # 4.0 > e, but the point after one over the threshold is judged without its difference
    # to it; 3.0 at 5 starts a new event (two quiet points before it); 7 and 8 belong to
    # its event (one quiet point), 12 starts another
    assert np.flatnonzero(raised).tolist() == [1, 5, 12]
    assert np.allclose(threshold, np.e) and state.since_over == 1
    adaptive = AlertRule(sigma=2.0, horizon=50, log_mean=0.0, log_var=0.25, span=3)
    rng = np.random.default_rng(4)
    quiet = np.exp(rng.normal(1.0, 0.2, 400))            # the stream runs higher than the fit
    quiet[300] = 1e6                                     # and has one huge spike
    whole, limits, end = alerts(quiet, quiet, adaptive, adaptive.start())
    assert abs(np.log(limits[-1]) - (1.0 + 2 * 0.2)) < 0.15   # it followed the stream
    assert whole[300] and limits[301] < limits[300] * 1.2   # the spike did not lift it much
    assert (quiet > limits).sum() < (quiet > limits[0]).sum() / 5     # a fixed one: ~half
    head, first, mid = alerts(quiet[:123], quiet[:123], adaptive, adaptive.start())
    tail, second, after = alerts(quiet[123:], quiet[123:], adaptive, mid)
    assert np.concatenate([head, tail]).tolist() == whole.tolist()
    assert np.abs(np.concatenate([first, second]) - limits).max() < 1e-12 and after == end


def test_a_learning_forest_follows_a_shift_and_scores_alike_in_any_batches():
    rng = np.random.default_rng(5)
    before = rng.normal(0, 0.1, 600)
    after = 3 + rng.normal(0, 0.1, 1400)                 # the stream moves to a new level
    points = _shingle(np.concatenate([before, after]), 4)[600:]
    samples = reservoir_samples([_shingle(before, 4)], 20, 64, rng)
    forest = build_forest(samples, rng)
    spec = LearnSpec(decay=1 / 200, block=16, max_depth=0, seed=3)
    learnt = Learner.start(spec, "s1", forest, samples).attribute(points).sum(axis=1)
    fixed = codisp(forest, points)
    assert learnt[-300:].mean() < fixed[-300:].mean() / 3      # the new level became normal
    assert np.allclose(learnt[:16], fixed[:16])            # the first block: the model's trees
    learner = Learner.start(spec, "s1", forest, samples)
    parts = []
    for cut in np.split(np.arange(len(points)), [5, 16, 17, 400, 401]):
        parts.append(learner.attribute(points[cut]))
        learner = Learner.restore(spec, "s1", forest, learner.samples, learner.keys,
                                  learner.seen, learner.pending)      # as a restart does
    assert np.array_equal(np.concatenate(parts).sum(axis=1), learnt)
    other = Learner.start(spec, "s2", forest, samples).attribute(points).sum(axis=1)
    assert not np.array_equal(other, learnt)                # each stream draws its own keys


def test_reservoir_is_uniform_and_merge_keeps_every_tree():
    rng = np.random.default_rng(2)
    stream = np.arange(1000, dtype=float)[:, None]
    samples = reservoir_samples(np.array_split(stream, 13), 400, 50, rng)
    assert samples.shape == (400, 50, 1)
    assert all(len(np.unique(s)) == 50 for s in samples)        # without replacement
    assert abs(samples.mean() - 499.5) < 15                      # early and late points alike
    a, b = build_forest(samples[:3], rng), build_forest(samples[3:5], rng)
    both = merge([a, b])
    assert both.n_trees == 5 and (both.count[:5] == 50).all()
    x = stream[::50]
    assert np.allclose(codisp(both, x, np.random.default_rng(9)).shape, (20,))


def test_level_diff_scaling_is_lossless_merges_shards_and_round_trips():
    rng = np.random.default_rng(4)
    x = _shingle(np.cumsum(rng.normal(0, 1, 400)) + 50, 6)
    kind = "level_diff"
    shards = [Moments.of(shape_features(part, kind)) for part in np.array_split(x, 3)]
    scaling = fit_scaling(kind, shards)
    z = scaling.apply(x)
    assert np.allclose(z.mean(axis=0), 0, atol=1e-9) and np.allclose(z.std(axis=0), 1)
    assert np.allclose(scaling.mean, fit_scaling(kind, Moments.of(shape_features(x, kind))).mean)
    feats = z * scaling.scale + scaling.mean                 # back to level + differences
    rebuilt = feats[:, :1] - np.cumsum(feats[:, :0:-1], axis=1)[:, ::-1]
    assert np.allclose(np.c_[rebuilt, feats[:, 0]], x)       # no information is lost
    stored = scaling_from_json(json.loads(json.dumps(scaling.to_json())), 6)
    assert np.allclose(stored.apply(x[:5]), z[:5])
    assert np.allclose(scaling_from_json({"threshold": 1.0}, 6).apply(x[:5]), x[:5])  # old model
    with pytest.raises(ValueError, match="unknown shingle transform 'fft'"):
        fit_scaling("fft", shards)


def test_level_diff_finds_jitter_inside_the_normal_range():
    """A burst of jitter at usual levels: raw shingles spend their cuts on level."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    value = np.sin(np.arange(1500) / 15) + rng.normal(0, 0.05, 1500)
    value[1000:1010] += 0.15 * (-1) ** np.arange(10)
    points, t = _shingle(value, 4), np.arange(3, 1500)
    held = window_labels(t, (t >= 1000) & (t < 1010), 4)
    assert held.sum() == 13                                  # shingles ending 1000 .. 1012
    pr = {}
    for kind in ("none", "level_diff"):
        rng = np.random.default_rng(0)
        scaling = fit_scaling(kind, Moments.of(shape_features(points[:800], kind)))
        forest = build_forest(reservoir_samples([scaling.apply(points[:800])], 30, 128, rng), rng)
        pr[kind] = average_precision_score(held, codisp(forest, scaling.apply(points)))
    assert pr["level_diff"] > 0.6 and pr["level_diff"] > pr["none"] + 0.2


def test_window_labels_cover_every_shingle_holding_a_labelled_point():
    t = np.array([3, 4, 5, 6, 7, 8, 20, 21, 22])
    last = np.array([0, 1, 0, 0, 0, 1, 0, 1, 0])
    assert window_labels(t, last, 3).tolist() == [0, 1, 1, 1, 0, 1, 0, 1, 1]   # no leak over gaps


def test_shingles_windows_rebuild_and_errors(spark, cfg):
    value, label = _stream(200)
    _write_stream(spark, cfg, value, label)
    built = build_features(spark, cfg, STREAM, params={"shingle_size": 5})
    rows = spark.table(built.table).orderBy("t").collect()
    assert len(rows) == 200 - 4 and built.n_features == 5
    assert rows[0]["t"] == 4 and rows[0]["t_start"] == 0 and rows[0]["split"] == "test"
    assert np.allclose(rows[0]["shingle"], value[:5])
    assert np.allclose(rows[-1]["shingle"], value[-5:]) and rows[-1]["label"] == label[-1]
    again = build_features(spark, cfg, STREAM, params={"shingle_size": 5})
    assert again.version == built.version
    resized = build_features(spark, cfg, STREAM, params={"shingle_size": 3})
    assert resized.version > built.version and resized.rows == 198
    with pytest.raises(ConfigError, match="shingle_size 500 is larger than stream data set "
                                          "'mitdb' \\(mitdb test: 200 points\\)"):
        build_features(spark, cfg, STREAM, params={"shingle_size": 500})
    with pytest.raises(ConfigError, match="holds shingles of 3 points, but shingle_size=4"):
        train(spark, cfg, "rcf", STREAM, params={"shingle_size": 4})
    with pytest.raises(ConfigError, match="rcf parameter transform='fft': must be one of "
                                          "level_diff, none"):
        train(spark, cfg, "rcf", STREAM, params={"shingle_size": 3, "transform": "fft"})
    with pytest.raises(ConfigError, match="rcf parameter max_depth=-1: must be >= 0"):
        train(spark, cfg, "rcf", STREAM, params={"shingle_size": 3, "max_depth": -1})
    with pytest.raises(ConfigError, match="rcf parameter value num_trees='x': expected an "
                                          "integer"):
        train(spark, cfg, "rcf", STREAM, params={"shingle_size": 3, "num_trees": "x"})
    with pytest.raises(ConfigError, match="rcf trains on stream data sets; 'wine' is a tabular "
                                          "data set \\(families for it: mlp\\)"):
        train(spark, cfg, "rcf", "wine")


def _declare(cfg, name, roles, ddl, keys):
    return with_datasets(cfg, {name: {
        "kind": "stream", "roles": roles, "silver": {"keys": keys},
        "source": {"files": f"/landing/{name}/*.csv", "format": "csv", "schema": ddl}}})


def _write_silver(spark, cfg, name, rows):
    spec = silver_spec(spark, cfg, name)
    target = delta.ensure_table(spark, spec, cfg.catalog.database)
    spark.createDataFrame(rows, spec.data_schema).write.format("delta").mode("append") \
        .saveAsTable(target)


def test_declared_stream_shingles_each_stream_with_several_values_and_no_label(spark, cfg):
    """A stream data set the test declares: two devices, two value columns, no label."""
    cfg = _declare(cfg, "pumps", {"stream_id": "pump", "order": "ts",
                                  "values": ["pressure", "flow"]},
                   "pump STRING NOT NULL, ts TIMESTAMP NOT NULL, pressure DOUBLE, flow INT",
                   ["pump", "ts"])
    base = dt.datetime(2026, 3, 1)
    rows = [(pump, base + dt.timedelta(minutes=i), 10.0 * k + i, k * 100 + i)
            for k, pump in enumerate(["p1", "p2"], 1) for i in range(12)]
    _write_silver(spark, cfg, "pumps", rows)
    built = build_features(spark, cfg, "pumps", params={"shingle_size": 3})
    assert built.n_features == 6 and built.rows == 2 * 10            # per pump: 12 - 2
    assert built.feature_names[:2] == ("pressure_lag2", "flow_lag2")
    table = spark.table(built.table)
    first = table.filter("stream_id = 'p2'").orderBy("t").first()
    t0 = int(base.replace(tzinfo=dt.UTC).timestamp())
    assert first["t"] == t0 + 120 and first["t_start"] == t0            # seconds since 1970
    assert first["shingle"] == [20.0, 200.0, 21.0, 201.0, 22.0, 202.0]   # no mixing of pumps
    assert first["label"] is None and first["split"] == "test"


def test_level_diff_of_several_values_differences_each_value_on_its_own():
    x = np.array([[1.0, 10.0, 2.0, 30.0, 4.0, 60.0]])            # 3 points x 2 values
    assert shape_features(x, "level_diff", 2).tolist() == [[4.0, 60.0, 1.0, 20.0, 2.0, 30.0]]
    scaling = fit_scaling("level_diff", Moments.of(shape_features(np.r_[x, 2 * x], "level_diff",
                                                                  2)), 2)
    stored = scaling_from_json(json.loads(json.dumps(scaling.to_json())), 6)
    assert stored.channels == 2 and np.allclose(stored.apply(x), scaling.apply(x))


@pytest.mark.slow
def test_two_ranks_train_score_and_flag_the_anomalies(spark, cfg, monkeypatch):
    """A declared stream data set: one labelled sensor with anomalies, one unlabelled."""
    cfg = _declare(cfg, "sensors", {"stream_id": "sensor", "order": "seq", "values": ["v"],
                                    "label": "anomaly"},
                   "sensor STRING NOT NULL, seq BIGINT NOT NULL, v DOUBLE, anomaly INT",
                   ["sensor", "seq"])
    value, label = _stream()
    quiet, _ = _stream(300, seed=5)
    _write_silver(spark, cfg, "sensors", [
        *(("s1", t, float(v), int(y)) for t, (v, y) in enumerate(zip(value, label, strict=True))),
        *(("s2", t, float(v), None) for t, v in enumerate(quiet))])
    built = build_features(spark, cfg, "sensors", params={"shingle_size": 4})
    params = {"num_trees": 30, "num_samples_per_tree": 128, "shingle_size": 4}
    result = train(spark, cfg, "rcf", "sensors", params=params)
    ranks = sorted(result.ranks, key=lambda r: r["rank"])
    assert [(r["rank"], r["trees"]) for r in ranks] == [(0, 15), (1, 15)]
    assert sum(r["points_seen"] for r in ranks) == built.rows      # shards cover the streams once
    metrics = result.model.metrics
    assert metrics["num_trees"] == 30 and metrics["eval_points"] == built.rows
    assert metrics["labelled_points"] == len(value) - 3          # s2's shingles are not judged
    assert metrics["roc_auc"] > 0.8 and metrics["pr_auc"] > 0.3     # rrcf: 0.86 on s1 alone
    assert (Path(result.model.artifact) / "anomaly_scores.png").stat().st_size > 0

    scored = score(spark, cfg, "rcf", result.model.name)
    assert scored.rows == built.rows and 1 <= scored.model_loads <= 2
    preds = spark.table(scored.table).filter(F.col("run_id") == scored.run_id)
    assert preds.select("stream_id", "t").distinct().count() == built.rows
    meta = json.loads((Path(result.model.artifact) / "rcf.json").read_text())
    assert meta["transform"] == "level_diff" and len(meta["scale"]) == 4
    batch = {(r["stream_id"], r["t"]): r["score"] for r in preds.collect()}
    assert np.allclose([batch[k] for k in zip(ranks[0]["stream_id"], ranks[0]["t"],
                                              strict=True)], ranks[0]["score"])   # same transform
    # The model's MLflow pyfunc, in this process without Spark, on silver's points (in
    # another order): each point's score and alert are lakeforge score's.
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.tracking_uri(cfg))
    pyfunc = mlflow.pyfunc.load_model(f"models:/{result.model.name}/{result.model.version}")
    points = spark.table(f"{cfg.catalog.database}.silver_sensors").toPandas().sample(
        frac=1.0, random_state=3)
    got = pyfunc.predict(points)
    assert got["score"].isna().sum() == 2 * 3                   # before each first shingle
    want = {(r["stream_id"], r["t"]): r for r in preds.collect()}
    for (sensor, seq), (_, row) in zip(zip(points["sensor"], points["seq"], strict=True),
                                       got.iterrows(), strict=True):
        if (sensor, seq) not in want:
            continue
        expected = want[(sensor, seq)]
        assert row["score"] == pytest.approx(expected["score"], rel=1e-9)
        assert (row["is_anomaly"], row["alert"]) == (expected["is_anomaly"], expected["alert"])
    preds = preds.filter("stream_id = 's1'")
    spike = preds.filter(F.col("t") == SPIKE).first()
    assert spike["is_anomaly"] and spike["threshold"] == pytest.approx(metrics["threshold"])
    flagged = {r["t"] for r in preds.filter("is_anomaly").collect()}
    assert len(flagged) < 0.1 * (len(value) - 3)
    raised = sorted(r["t"] for r in preds.filter("alert").collect())
    assert {SPIKE, SHIFT[0]} <= set(raised) and len(raised) < len(flagged) / 2
    assert not [t for t in raised if SPIKE < t < SPIKE + 8]       # the spike alerts once
    assert {r["t"] for r in preds.orderBy(F.desc("point_score")).limit(1).collect()} == {SPIKE}
    assert metrics["point_pr_auc"] > metrics["pr_auc"] / 2 and metrics["events"] == 2
    assert metrics["events_alerted"] >= 1 and metrics["alerts"] == len(raised)
    assert score(spark, cfg, "rcf", result.model.name).skipped      # same model + input: no-op


def test_scoring_rejects_non_numeric_shingles(spark, cfg, tmp_path):
    from models.rcf.scoring import score_rcf
    from models.store import ModelRecord

    record = ModelRecord("s_rcf", 1, "rcf", {"shingle_size": 2}, {}, "x", 0, "r",
                         str(tmp_path), None)
    df = spark.createDataFrame([("s", 1, ["a", "b"])], "stream_id string, t long, "
                                                        "shingle array<string>")
    with pytest.raises(SchemaMismatchError, match="'shingle' is array<string>"):
        score_rcf(spark, cfg, record, df, None)
