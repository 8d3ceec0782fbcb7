"""DeepAR: windows from silver_series, 2-rank Horovod training, evaluation and scoring."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from lakehouse import delta
from lakehouse.config import load_config
from lakehouse.errors import ConfigError
from lakehouse.featuresets import build_features
from lakehouse.featuresets.series import SeriesTooShortError, window_spec
from lakehouse.lakefs import LakeFS
from lakehouse.tables import layer_table
from models import tracking
from models.deepar import FAMILY
from models.deepar.baselines import seasonal_naive
from models.deepar.evaluate import forecast_metrics
from models.deepar.network import load, sample_paths
from models.deepar.scoring import UnknownSeriesError
from models.runner import snapshot_files, train
from models.scoring import score
from tests.helpers import silver_spec, with_datasets

PANEL = "us_employment"              # monthly calendar; the rows are synthetic
WINDOW = {"context_length": 12, "prediction_length": 6}
LENGTHS = {"S0": 60, "S1": 60, "S2": 60, "S3": 48, "S4": 60}     # S3 starts a year later
FAST = {"epochs": 10, "steps_per_epoch": 60, "batch_size": 32, "learning_rate": 0.01,
        "hidden": 24, "layers": 2, "embedding_dim": 4, "num_samples": 100, "seasonal_lags": 1}


def month(i: int) -> dt.date:
    return dt.date(2010 + i // 12, i % 12 + 1, 1)


def synthetic(series_id: str, n: int, end: int = 60, seed: int = 0) -> list[tuple]:
    """Level + yearly season + small noise; the last ``n`` of ``end`` months."""
    rng = np.random.default_rng(seed)
    k = int(series_id[1:]) if series_id[1:].isdigit() else 0
    rows = []
    for i in range(end - n, end):
        value = 100 + 40 * k + 20 * np.sin(2 * np.pi * i / 12) + 0.2 * i + rng.normal(0, 1.0)
        rows.append((PANEL, series_id, f"title {series_id}", month(i), float(value)))
    return rows


def write_silver(spark, cfg, rows: list[tuple]) -> str:
    spec = silver_spec(spark, cfg, "us_employment")
    name = delta.ensure_table(spark, spec, cfg.catalog.database)
    spark.createDataFrame(rows, spec.schema).write.format("delta").mode("append") \
        .saveAsTable(name)
    return name


@pytest.fixture
def panel(spark, cfg):
    rows = [r for i, (s, n) in enumerate(LENGTHS.items()) for r in synthetic(s, n, seed=i)]
    rows = [r for r in rows if (r[1], r[3]) != ("S2", month(20))]     # one gap in S2
    write_silver(spark, cfg, rows)
    return build_features(spark, cfg, PANEL, params=dict(WINDOW))


def months_of(day: dt.date) -> int:
    return (day.year - 2010) * 12 + day.month - 1


def test_windows_hold_out_the_horizon_and_rebuild_is_a_noop(spark, cfg, panel):
    c, p = WINDOW["context_length"], WINDOW["prediction_length"]
    gold = spark.table(panel.table).toPandas()
    assert panel.n_features == c + p and set(gold.target.map(len)) == {c + p}
    silver = spark.table(layer_table(cfg.catalog.database, "silver", "series")).toPandas()
    expected_train = 0
    for sid in LENGTHS:
        series = silver[silver.series_id == sid].sort_values("period")
        by_month = dict(zip(series.period.map(months_of), series.value, strict=True))
        first, last = min(by_month), max(by_month)
        dense = [by_month.get(m, np.nan) for m in range(first, last + 1)]   # S2's gap: NaN
        # Oracle: every run of c + p months that ends before the held-out horizon.
        starts = list(range(first, last - p - (c + p) + 2))
        expected_train += len(starts)
        rows = gold[gold.series_id == sid]
        test = rows[rows.split == "test"].iloc[0]
        np.testing.assert_allclose(test.target, dense[-(c + p):], rtol=1e-6)
        assert test.start == month(60 - c - p) and test.season == (60 - c - p) % 12
        train = rows[rows.split == "train"]
        assert sorted(train.start.map(months_of)) == starts
        for _, w in train.iterrows():   # calendar slices, none reaching into the horizon
            m0 = months_of(w.start)
            expected = [by_month.get(m0 + k, np.nan) for k in range(c + p)]
            np.testing.assert_allclose(w.target, expected, rtol=1e-6)
            assert w.season == m0 % 12
            np.testing.assert_allclose(w.scale, 1 + np.nanmean(np.abs(expected[:c])),
                                       rtol=1e-5)
    per_split = gold.groupby("split").size().to_dict()
    assert per_split == {"test": 5, "train": expected_train}
    gapped = gold[(gold.series_id == "S2") & gold.target.map(lambda t: np.isnan(t).any())]
    assert len(gapped) == c + p     # the windows over S2's missing month are kept, masked
    assert sorted(gold.groupby("series_id").series_idx.first()) == list(range(5))
    train_files = snapshot_files(spark.table(panel.table))["train"]
    assert len(train_files) >= 2 * cfg.train.num_proc
    again = build_features(spark, cfg, PANEL, params=dict(WINDOW))
    assert again.version == panel.version                     # same silver version: no-op

    # A table an earlier release wrote, before `static` existed, with the same build key:
    # the next build adds the column instead of rebuilding, and training can read it.
    location = delta.table_location(spark, panel.table)
    key = delta.commit_json(spark, panel.table, panel.version)
    (spark.read.format("delta").load(location).drop("static").write.format("delta")
     .mode("overwrite").option("overwriteSchema", "true")
     .option("userMetadata", json.dumps(key)).save(location))
    old = delta.snapshot(spark, panel.table).data_version
    upgraded = build_features(spark, cfg, PANEL, params=dict(WINDOW))
    assert upgraded.version == old                            # no rebuild of the rows
    delta.check_schema(spark.table(panel.table).schema, window_spec(PANEL).schema,
                       panel.table)


def test_gaps_ragged_ends_and_short_series_keep_their_windows(spark, cfg):
    from lakehouse.featuresets.series import fill_gaps

    c, p = WINDOW["context_length"], WINDOW["prediction_length"]
    rows = synthetic("S0", 60)
    # S1: two empty targets and an absent month inside, one more in its last window
    s1 = [r for r in synthetic("S1", 60, seed=1) if months_of(r[3]) not in (40, 55)]
    s1 = [(*r[:4], None) if months_of(r[3]) in (30, 31) else r for r in s1]
    s2 = synthetic("S2", 56, end=57, seed=2)        # ends three months before the others
    s3 = synthetic("S3", 10, seed=3)                # shorter than one window
    write_silver(spark, cfg, rows + s1 + s2 + s3)
    table = window_spec(PANEL).full_name(cfg.catalog.database)

    def test_windows(**features) -> dict:
        build_features(spark, cfg, PANEL, params={**WINDOW, **features})
        gold = spark.table(table).filter("split = 'test'").toPandas()
        return {r.series_id: r for r in gold.itertuples()}

    value = {sid: {months_of(r[3]): r[4] for r in rs}
             for sid, rs in (("S1", s1), ("S2", s2), ("S3", s3))}

    def expected(sid: str, first: int) -> list[float]:
        return [np.nan if value[sid].get(m) is None else value[sid][m]
                for m in range(first, first + c + p)]

    own = test_windows()
    np.testing.assert_allclose(own["S1"].target, expected("S1", 60 - c - p), rtol=1e-6)
    assert np.isnan(own["S1"].target).sum() == 1                      # month 55, kept
    assert own["S2"].start == month(57 - c - p)      # forecast from its own last month
    np.testing.assert_allclose(own["S2"].target, expected("S2", 57 - c - p), rtol=1e-6)
    # S3: 10 months padded in front to a window, as missing targets; scale from the 4
    # observed context months.
    assert own["S3"].start == month(60 - c - p)
    np.testing.assert_allclose(own["S3"].target, expected("S3", 60 - c - p), rtol=1e-6)
    assert np.isnan(own["S3"].target[:c + p - 10]).all()
    np.testing.assert_allclose(
        own["S3"].scale, 1 + np.mean(np.abs(expected("S3", 60 - c - p)[c + p - 10:c])),
        rtol=1e-5)
    train = spark.table(table).filter("split = 'train'").toPandas()
    assert not (train.series_id == "S3").any()     # too short for a window before its horizon
    for w in train[train.series_id == "S1"].itertuples():    # masked, never empty parts
        assert np.isfinite(w.target[:c]).any() and np.isfinite(w.target[c:]).any()
    s1_starts = sorted(train[train.series_id == "S1"].start.map(months_of))
    assert s1_starts == list(range(0, 60 - p - (c + p) + 1))

    aligned = test_windows(ends="aligned")
    assert aligned["S2"].start == month(60 - c - p)      # the panel's last month
    assert np.isnan(aligned["S2"].target[-3:]).all()
    np.testing.assert_allclose(aligned["S2"].target[:-3], expected("S2", 60 - c - p)[:-3],
                               rtol=1e-6)

    linear = test_windows(fill="linear")
    at = 55 - (60 - c - p)                           # month 55 in the test window
    assert linear["S1"].target[at] == pytest.approx(
        (value["S1"][54] + value["S1"][56]) / 2, rel=1e-5)
    assert np.isnan(linear["S3"].target[0])          # padding is not a gap: still missing
    np.testing.assert_array_equal(fill_gaps(np.array([np.nan, 1, np.nan, np.nan, 4, np.nan]),
                                            "previous"), [np.nan, 1, 1, 1, 4, np.nan])
    np.testing.assert_array_equal(fill_gaps(np.array([np.nan, 1, np.nan, np.nan, 4, np.nan]),
                                            "linear"), [np.nan, 1, 2, 3, 4, np.nan])
    np.testing.assert_array_equal(fill_gaps(np.array([1, np.nan, 4.0]), "zero"), [1, 0, 4])

    with pytest.raises(SeriesTooShortError,
                       match=r"S3 \(10 periods\) shorter than min_length 11 periods"):
        build_features(spark, cfg, PANEL, params={**WINDOW, "min_length": 11})
    with pytest.raises(ConfigError, match="unknown parameter.*lag"):
        build_features(spark, cfg, PANEL, params={"lag": 3})


def test_a_masked_step_adds_nothing_to_the_loss():
    import tensorflow as tf

    from lakehouse.featuresets.series import frequency
    from models.deepar.network import build, carried, network_config, nll, window_loss

    np.testing.assert_array_equal(
        carried(tf.constant([[np.nan, 1, np.nan, np.nan, 3, np.nan]], tf.float32)).numpy(),
        [[1, 1, 1, 1, 3, 3]])
    def gauss(z: float, mu: float, raw_sd: float) -> float:
        sd = np.log1p(np.exp(raw_sd)) + 1e-4
        return 0.5 * np.log(2 * np.pi) + np.log(sd) + 0.5 * ((z - mu) / sd) ** 2

    # Gaussian NLL by hand over the observed steps only (targets / scale 2)
    out = tf.constant([[[0.2, 0.0], [1.0, 1.0], [1.5, -1.0]]], tf.float32)
    target = tf.constant([[1.0, np.nan, 4.0]], tf.float32)
    by_hand = np.mean([gauss(0.5, 0.2, 0.0), gauss(2.0, 1.5, -1.0)])
    assert float(nll(out, target, tf.constant([2.0]), "gaussian")) == \
        pytest.approx(by_hand, rel=1e-5)

    params = {**FAMILY.defaults, "hidden": 4, "layers": 1, "embedding_dim": 2, "dropout": 0.0,
              "likelihood": "gaussian", "seasonal_lags": 0}
    net = build(network_config(params, 1, 4, 4, 2, frequency("quarter")))
    values = np.array([[3.0, 4.0, np.nan, 5.0, 6.0, 7.0]], np.float32)
    scale = np.array([5.0], np.float32)
    args = (tf.zeros((1,), tf.int32), tf.zeros((1,), tf.int32), tf.constant(scale),
            tf.zeros((1, 0), tf.int32), tf.zeros((1, 6, 0)), "gaussian", 4)
    loss = float(window_loss(net, tf.constant(values), *args, training=False))
    # By hand: run the network on the carried inputs, score steps 1..5 except the missing 2.
    z = carried(tf.constant(values / scale[:, None])).numpy()
    assert z[0, 2] == pytest.approx(4.0 / 5)
    season = (np.arange(1, 6) % 4)[None, :]
    o, _ = net((tf.constant(z[:, :-1, None]), tf.constant(season, tf.int32),
                tf.zeros((1,), tf.int32), tf.math.log(tf.constant(scale)),
                tf.zeros((1, 0), tf.int32), tf.zeros((1, 5, 0))))
    head = o.numpy()[0]
    y = values[0, 1:] / scale[0]
    terms = [gauss(y[k], head[k, 0], head[k, 1]) for k in range(5) if np.isfinite(y[k])]
    assert len(terms) == 4 and loss == pytest.approx(np.mean(terms), rel=1e-4)


def test_student_t_head_scores_and_samples_its_distribution():
    import tensorflow as tf
    from scipy import stats

    from models.deepar.network import _draw, nll

    softplus = lambda x: float(np.log1p(np.exp(x)))   # noqa: E731
    out = tf.constant([[[0.3, 0.5, 1.0], [2.0, -0.5, 0.2], [0.0, 0.0, 0.0]]], tf.float32)
    target = tf.constant([[2.0, 9.0, np.nan]], tf.float32)      # scale 4: z = 0.5, 2.25
    terms = [-stats.t.logpdf(z, df=2 + softplus(o[2]), loc=o[0], scale=softplus(o[1]) + 1e-4)
             for z, o in ((0.5, (0.3, 0.5, 1.0)), (2.25, (2.0, -0.5, 0.2)))]
    assert float(nll(out, target, tf.constant([4.0]), "student_t")) == \
        pytest.approx(np.mean(terms), rel=1e-5)
    # 20,000 draws of one step: their quantiles are the distribution's
    n = 20_000
    head = tf.tile(tf.constant([[1.0, 0.0, -1.0]]), [n, 1])
    draws = _draw(head, tf.fill([n], 3.0), "student_t", [np.random.default_rng(0)], n).numpy()
    dist = stats.t(df=2 + softplus(-1.0), loc=3.0, scale=3 * (softplus(0.0) + 1e-4))
    np.testing.assert_allclose(np.quantile(draws, [0.1, 0.5, 0.9]),
                               dist.ppf([0.1, 0.5, 0.9]), atol=0.12)


def test_a_window_is_scaled_by_its_whole_context_or_its_last_season():
    from lakehouse.featuresets.series import frequency
    from models.deepar.network import context_scale, network_config

    ctx = np.array([[2.0, 4.0, np.nan, 10.0, 20.0],
                    [1.0, 3.0, 5.0, np.nan, np.nan]], np.float32)
    np.testing.assert_allclose(context_scale(ctx).numpy(), [1 + 36 / 4, 1 + 9 / 3])
    # the last two periods: row 0 has 10 and 20; row 1 has none, so its whole context
    np.testing.assert_allclose(context_scale(ctx, 2).numpy(), [1 + 15, 1 + 3])
    params = {**FAMILY.defaults, "scale": "season"}
    assert network_config(params, 3, 4, 12, 4, frequency("quarter"))["scale_periods"] == 4
    assert network_config({**params, "scale": "context"}, 3, 4, 12, 4,
                          frequency("quarter"))["scale_periods"] == 0
    # a season as long as the context is the whole context
    assert network_config(params, 3, 12, 12, 4, frequency("month"))["scale_periods"] == 0


def test_metrics_against_hand_computed_values():
    actual = np.array([[10.0, 20.0]])
    fc = {"mean": np.array([[12.0, 18.0]]), "q10": np.array([[8.0, 15.0]]),
          "q50": np.array([[11.0, 20.0]]), "q90": np.array([[14.0, 25.0]])}
    m = forecast_metrics(actual, fc, "x")
    assert m["x_nd"] == pytest.approx(1 / 30)
    assert m["x_nrmse"] == pytest.approx(2 / 15)
    # pinball: q10 -> 0.1*2 + 0.1*5 = 0.7; q50 -> 0.5*1 = 0.5; q90 -> 0.1*4 + 0.1*5 = 0.9
    assert m["x_wql"] == pytest.approx(np.mean([2 * 0.7, 2 * 0.5, 2 * 0.9]) / 30)
    sn = seasonal_naive(np.array([1.0, 2, 3, 4, 2, 3, 4, 5]), 6, 4)
    np.testing.assert_allclose(sn["mean"], [2, 3, 4, 5, 2, 3])
    assert sn["q90"][4] - sn["q50"][4] == pytest.approx(np.sqrt(2) * (sn["q90"][0] - sn["q50"][0]))


def test_lag_features_read_values_whole_seasons_back():
    from models.deepar.network import lag_features, lags

    assert lags(12, 2) == [1, 12, 24] and lags(4, 0) == [1]
    assert lags(4, 2, recent_lags=5) == [1, 2, 3, 4, 5, 8] and lags(1, 2) == [1, 2]
    z = np.arange(30, dtype=np.float32)[None, :] + 100      # position t holds 100 + t
    x = lag_features(z, 20, 3, [1, 12, 24]).numpy()[0]
    np.testing.assert_array_equal(x, [[119, 108, 0], [120, 109, 0], [121, 110, 0]])
    # lag 24 reaches back to position 0 only from t = 24 on; before, it reads 0
    np.testing.assert_array_equal(lag_features(z, 24, 1, [24]).numpy()[0], [[100]])


def test_cosine_schedule_decays_and_a_resumed_run_continues_it():
    import tensorflow as tf

    from lakehouse.featuresets.series import frequency
    from models.deepar.network import build, network_config
    from models.deepar.rank import optimizer

    params = {**FAMILY.defaults, "learning_rate": 0.01}
    net = build(network_config(params, 3, 12, 36, 24, frequency("month")))

    def rate_of_next_step(opt) -> float:
        """The rate the optimizer applies on its next step (Keras reports it after a step)."""
        opt.apply_gradients([(tf.zeros_like(v), v) for v in net.trainable_variables])
        return float(opt.learning_rate)

    assert rate_of_next_step(optimizer(net, params, 100, 0)) == pytest.approx(0.01)
    half = 0.01 * (0.01 + 0.99 * 0.5)                           # cosine half-way to 1 %
    assert rate_of_next_step(optimizer(net, params, 100, 50)) == pytest.approx(half, rel=1e-4)
    assert rate_of_next_step(optimizer(net, params, 100, 100)) == pytest.approx(1e-4, rel=1e-3)
    constant = optimizer(net, {**params, "lr_schedule": "constant"}, 100, 50)
    assert rate_of_next_step(constant) == pytest.approx(0.01)


def test_forecasts_take_the_moving_average_of_the_steps_weights():
    import tensorflow as tf

    from lakehouse.featuresets.series import frequency
    from models.deepar.network import build, network_config
    from models.deepar.rank import optimizer

    params = {**FAMILY.defaults, "learning_rate": 0.1, "average_weights": 0.5}
    net = build(network_config(params, 3, 12, 36, 24, frequency("month")))
    opt = optimizer(net, params, 100, 0)
    average = [v.numpy() for v in net.trainable_variables]
    for k in range(3):
        opt.apply_gradients([(tf.fill(v.shape, 1.0 + k), v) for v in net.trainable_variables])
        average = [0.5 * a + 0.5 * v.numpy() for a, v in zip(average, net.trainable_variables,
                                                             strict=True)]
    last = [v.numpy() for v in net.trainable_variables]
    opt.finalize_variable_values(net.trainable_variables)
    for want, got, step in zip(average, net.trainable_variables, last, strict=True):
        assert np.allclose(got.numpy(), want, atol=1e-6)
        assert not np.allclose(want, step, atol=1e-4)   # the average is not the last step

    # A short run averages over a tenth of its steps at most; ten steps or fewer, none.
    assert optimizer(net, {**params, "average_weights": 0.99}, 3000, 0).ema_momentum == 0.99
    assert optimizer(net, {**params, "average_weights": 0.99}, 120, 0).ema_momentum == \
        pytest.approx(1 - 10 / 120)
    assert not optimizer(net, {**params, "average_weights": 0.99}, 10, 0).use_ema

    plain = {**params, "average_weights": 0.0}
    net = build(network_config(plain, 3, 12, 36, 24, frequency("month")))
    opt = optimizer(net, plain, 100, 0)
    opt.apply_gradients([(tf.ones_like(v), v) for v in net.trainable_variables])
    last = [v.numpy() for v in net.trainable_variables]
    opt.finalize_variable_values(net.trainable_variables)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(last, net.trainable_variables,
                                                           strict=True))


def week(i: int) -> dt.date:
    return dt.date(2020, 1, 6) + dt.timedelta(weeks=i)       # Mondays


WEEKLY = {"stores": {
    "kind": "series", "roles": {"item_id": "store", "timestamp": "week", "target": "sales",
                                "static": ["format"], "dynamic": ["promo"]},
    "source": {"files": "/landing/stores/*.parquet", "format": "parquet",
               "schema": "store STRING NOT NULL, week DATE NOT NULL, sales DOUBLE, "
                         "format STRING, promo INT"},
    "silver": {"keys": ["store", "week"]},
    "features": {"freq": "week", "season_length": 12, **WINDOW}}}
PROMO_LIFT = 40.0


def promo(store: str, i: int) -> int:
    return int((i + int(store[1:])) % 5 == 0)


SHORT = 16    # S5: a store of 16 weeks, padded to its windows


@pytest.fixture
def weekly(spark, cfg):
    """A weekly series data set the test declares, with a 12-week season, a store format
    (static) and promotion weeks that lift sales (dynamic), known 6 weeks ahead. As real
    panels do, it has gaps: S1 lacks sales in weeks 30-31, S2 lacks week 50 (inside its
    last window), S3 ends two weeks early, S5 has 16 weeks only."""
    cfg = with_datasets(cfg, WEEKLY)
    p = WINDOW["prediction_length"]
    rows = []
    for i, (sid, n) in enumerate({**LENGTHS, "S5": SHORT}.items()):
        fmt = "mall" if i % 2 else "street"
        for r in synthetic(sid, n, seed=i):
            m = months_of(r[3])
            sales = r[4] + PROMO_LIFT * promo(sid, m)
            if (sid, m) == ("S2", 50):
                continue
            if (sid == "S1" and m in (30, 31)) or (sid == "S3" and m >= 58):
                sales = None
            rows.append((sid, week(m), sales, fmt, promo(sid, m)))
        rows += [(sid, week(m), None, fmt, promo(sid, m)) for m in range(60, 60 + p)]
    spec = silver_spec(spark, cfg, "stores")
    name = delta.ensure_table(spark, spec, cfg.catalog.database)
    spark.createDataFrame(rows, spec.schema).write.format("delta").mode("append") \
        .saveAsTable(name)
    build_features(spark, cfg, "stores")
    return cfg


def test_declared_series_settings_are_checked_and_named():
    from lakehouse.featuresets.series import series_of

    base = load_config(environ={})
    for bad, message in (({"freq": "fortnight"}, "freq: 'fortnight' is not a frequency; "
                                                 "write one of minute, hour, day"),
                         ({"freq": "0 hours"}, "freq: '0 hours' is not a frequency"),
                         ({"freq": "day", "context_length": 0},
                          "context_length: 0 is not a whole number >= 1"),
                         ({"freq": "day", "lags": 3}, "unknown key\\(s\\) lags")):
        entry = {"stores": {**WEEKLY["stores"], "features": {**WINDOW, **bad}}}
        with pytest.raises(ConfigError, match=f"datasets.stores.features.*{message}"):
            series_of(with_datasets(base, entry), "stores")
    daily = series_of(with_datasets(base, {"stores": {**WEEKLY["stores"], "features": {
        "freq": "day", **WINDOW}}}), "stores")
    assert daily.season_length == 7 and daily.freq.days == 1
    half_hourly = series_of(with_datasets(base, {"stores": {**WEEKLY["stores"],
        "features": {"freq": "30 minutes", **WINDOW}}}), "stores")
    assert (half_hourly.freq.seconds, half_hourly.season_length) == (1800, 48)


def test_future_periods_step_by_seconds_or_months():
    from models.deepar.scoring import future_periods

    def stamps(start, last: int, steps: int, months: int, seconds: int = 0) -> list:
        return [pd.Timestamp(x).to_pydatetime() for x in
                future_periods(pd.Series(start), np.array([last]), steps, months, seconds)[0]]

    day = 86_400
    assert stamps([dt.date(2024, 2, 26)], 2, 2, 0, day) == \
        [dt.datetime(2024, 2, 29), dt.datetime(2024, 3, 1)]         # the leap day counts
    assert stamps([dt.date(2024, 2, 26)], 0, 1, 0, 7 * day) == [dt.datetime(2024, 3, 4)]
    assert stamps([dt.date(2024, 1, 1)], 1, 1, 3) == [dt.datetime(2024, 7, 1)]
    assert stamps([dt.datetime(2024, 3, 31, 23, 30)], 0, 2, 0, 1800) == \
        [dt.datetime(2024, 4, 1, 0, 0), dt.datetime(2024, 4, 1, 0, 30)]


@pytest.mark.slow
def test_two_ranks_train_forecast_register_and_score(spark, weekly, monkeypatch):
    """A weekly data set the test declares trains, forecasts and scores by weeks."""
    spark, cfg = spark, weekly
    c, p = WINDOW["context_length"], WINDOW["prediction_length"]
    with pytest.raises(ConfigError, match="seasonal_lags 2 and recent_lags 1 reach 24 periods "
                                          "back, beyond .*context_length 12"):
        train(spark, cfg, "deepar", "stores", params={**FAST, "seasonal_lags": 2})
    result = train(spark, cfg, "deepar", "stores", params=FAST)
    ranks = sorted(result.ranks, key=lambda r: r["rank"])
    assert [(r["rank"], r["size"]) for r in ranks] == [(0, 2), (1, 2)]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    loss = result.history["loss"]
    assert len(loss) == FAST["epochs"] and loss[-1] < loss[0]

    fc = ranks[0]["forecast"]
    q10, q50, q90 = (np.asarray(fc[k]) for k in ("q10", "q50", "q90"))
    assert q10.shape == (6, p) and (q10 <= q50).all() and (q50 <= q90).all()
    target = np.asarray(fc["target"])
    history, actual = target[:, :c], target[:, c:]
    assert np.isfinite(actual).all() and np.isnan(history).sum() == 1 + (c + p - SHORT)
    inside = (actual >= q10) & (actual <= q90)              # the 10-90 band, 36 points
    # Ten short epochs leave the bands narrow (about the noise's 80 % width), so a small
    # bias of the median moves a point out; the median itself is checked below.
    assert inside.mean() >= 0.4, (inside.mean(), actual, q10, q90)
    constant = (np.abs(actual - np.nanmean(history, axis=1, keepdims=True)).sum()
                / np.abs(actual).sum())
    m = result.model.metrics
    assert m["deepar_nd"] < 0.5 * constant, (m["deepar_nd"], constant)
    for measure in ("nd", "wql"):     # one model across the gapped panel beats both peers
        peers = min(m[f"seasonal_naive_{measure}"], m[f"ets_{measure}"])
        assert m[f"deepar_{measure}"] < 0.5 * peers, m
    for key in ("deepar_nrmse", "deepar_wql", "seasonal_naive_nd", "ets_nd", "ets_wql"):
        assert np.isfinite(m[key]) and m[key] > 0
    assert m["epochs"] == FAST["epochs"] and m["test_series"] == 6

    row = spark.table(f"{cfg.catalog.database}.models").filter("name = 'stores_deepar'")
    stored = row.collect()
    assert len(stored) == 1 and json.loads(stored[0].metrics) == m
    artifact = Path(stored[0].artifact)
    assert (artifact / "forecast_fan.png").read_bytes()[:4] == b"\x89PNG"
    config = json.loads((artifact / "deepar.json").read_text())
    assert config["context_length"] == c and config["static_cardinalities"] == [2]
    assert config["dynamic_mean"] == [pytest.approx(0.2, abs=0.02)]       # a week in five
    # The promotion input is used: the same contexts forecast with promotions in every
    # future week come out higher, by about the lift the data has.
    net, config = load(str(artifact))
    test = spark.table(f"{cfg.catalog.database}.gold_deepar_stores").filter("split = 'test'") \
        .orderBy("series_idx").toPandas()
    context = np.stack(test.target.map(lambda t: np.asarray(t)[p:]))
    season0 = (test.season.to_numpy() + p) % 12
    static = np.stack(test.static_idx.map(np.asarray))
    history_promo = np.stack(test.dynamic.map(lambda d: np.asarray(d)[p:]))
    lifted = []
    for flag in (0.0, 1.0):
        dynamic = np.concatenate([history_promo, np.full((len(test), p), flag)], axis=1)
        paths = sample_paths(net, config, context, season0, test.series_idx.to_numpy(),
                             200, 0, static, dynamic[..., None])
        lifted.append(paths.mean(axis=(1, 2)))
    assert (lifted[1] - lifted[0]).mean() > PROMO_LIFT / 2, lifted

    scored = score(spark, cfg, "deepar", "stores_deepar")
    assert scored.rows == 6 * p and 1 <= scored.model_loads <= cfg.train.num_proc
    out = spark.table(scored.table).filter(F.col("run_id") == scored.run_id).toPandas()
    assert sorted(out.groupby("series_id").size().to_dict().items()) == \
        [(s, p) for s in sorted([*LENGTHS, "S5"])]
    s3_rows = out[out.series_id == "S3"].sort_values("step")     # from its own last week
    assert list(s3_rows.period) == [week(58 + k) for k in range(p)]
    s0_rows = out[out.series_id == "S0"].sort_values("step")
    assert list(s0_rows.period) == [week(60 + k) for k in range(p)]    # after the last week
    assert [t.to_pydatetime() for t in s0_rows.period_time] == \
        [dt.datetime.combine(week(60 + k), dt.time()) for k in range(p)]
    assert (s0_rows.q10 <= s0_rows.q50).all() and (s0_rows.q50 <= s0_rows.q90).all()
    again = score(spark, cfg, "deepar", "stores_deepar")
    assert again.skipped and spark.table(scored.table).count() == len(out)
    # The model's MLflow pyfunc, in this process without Spark, on the series' latest
    # windows (in another order): lakeforge score's forecasts, series by series. (The
    # frame gets a fresh index: MLflow 3.7's input check pairs array columns with the
    # wrong rows of a frame whose index is not 0..n-1.)
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.tracking_uri(cfg))
    pyfunc = mlflow.pyfunc.load_model(f"models:/stores_deepar/{result.model.version}")
    got = pyfunc.predict(test.iloc[::-1].reset_index(drop=True)).sort_values(
        ["series_id", "step"])
    want = out.sort_values(["series_id", "step"])
    assert list(got.series_id) == list(want.series_id) and list(got.step) == list(want.step)
    assert list(got.period) == list(want.period)
    for column in ("mean", "q10", "q50", "q90"):
        assert got[column].to_numpy() == pytest.approx(want[column].to_numpy(), rel=1e-3)

    # A series and a store format arrive that sort first: a rebuild keeps every index it
    # gave, so the model still finds its series; the newcomers take the next ones, and
    # the model refuses the series it never saw instead of forecasting it as another.
    windows = f"{cfg.catalog.database}.gold_deepar_stores"

    def indices():
        test = spark.table(windows).filter("split = 'test'").collect()
        return ({r.series_id: r.series_idx for r in test},
                {r.static[0]: r.static_idx[0] for r in test})

    series_before, formats_before = indices()
    assert sorted(formats_before.items()) == [("mall", 1), ("street", 2)]
    spec = silver_spec(spark, cfg, "stores")
    newcomer = [("A0", week(m), 100.0 + m % 12, "kiosk", 0) for m in range(40)]
    spark.createDataFrame(newcomer, spec.schema).write.format("delta").mode("append") \
        .saveAsTable(spec.full_name(cfg.catalog.database))
    build_features(spark, cfg, "stores")
    series_after, formats_after = indices()
    assert series_after == {**series_before, "A0": 6}
    assert formats_after == {**formats_before, "kiosk": 3}
    with pytest.raises(UnknownSeriesError, match="stores_deepar v1 was trained on 6 series; "
                                                  "A0 came after it"):
        score(spark, cfg, "deepar", "stores_deepar")

    # With validation, each series' last training weeks are forecast after every epoch;
    # the run keeps its best epoch's weights and stops one epoch after it stops improving.
    held = train(spark, cfg, "deepar", "stores",
                 params={**FAST, "epochs": 6, "validation": True, "patience": 1})
    h, vm = held.history, held.model.metrics
    run = len(h["loss"])
    assert len(h["val_wql"]) == len(h["val_nd"]) == run and 1 <= vm["best_epoch"] <= run
    assert vm["validation_wql"] == min(h["val_wql"]) == h["val_wql"][int(vm["best_epoch"]) - 1]
    assert run == 6 or run == vm["best_epoch"] + 1
    assert len({r["weights"] for r in held.ranks}) == 1


HOURLY = {"meters": {
    "kind": "series", "roles": {"item_id": "meter", "timestamp": "hour", "target": "load",
                                "static": ["site"], "dynamic": ["temp", "holiday"]},
    "source": {"files": "/landing/meters/*.parquet", "format": "parquet",
               "schema": "meter STRING NOT NULL, hour TIMESTAMP NOT NULL, load DOUBLE, "
                         "site STRING, temp DOUBLE, holiday INT"},
    "silver": {"keys": ["meter", "hour"]},
    "features": {"freq": "hour", **WINDOW}}}


def hour(i: int) -> dt.datetime:
    return dt.datetime(2024, 3, 1, 5) + dt.timedelta(hours=i)


def test_hourly_windows_carry_static_and_dynamic_covariates_and_future_inputs(spark, cfg,
                                                                              tmp_path):
    """An hourly data set the test declares: hour-of-day seasons, a category per meter,
    two covariates per hour (one missing once), and the forecast hours' covariates where
    silver has them."""
    from models.deepar.scoring import MissingCovariatesError, _check_inputs

    c, p = WINDOW["context_length"], WINDOW["prediction_length"]
    cfg = with_datasets(cfg, HOURLY)
    sites = {"M0": "north", "M1": "south", "M2": None}
    rows = []
    for k, (meter, site) in enumerate(sites.items()):
        for i in range(40):
            temp = None if (meter, i) == ("M0", 30) else 10.0 + i + k
            rows.append((meter, hour(i), 50.0 + k + i % 24, site, temp, int(i % 7 == 0)))
        ahead = p if meter != "M2" else p - 3                   # M2's last 3 hours are unknown
        rows += [(meter, hour(i), None, site, 100.0 + i, 1) for i in range(40, 40 + ahead)]
    spec = silver_spec(spark, cfg, "meters")
    name = delta.ensure_table(spark, spec, cfg.catalog.database)
    spark.createDataFrame(rows, spec.schema).write.format("delta").mode("append") \
        .saveAsTable(name)
    built = build_features(spark, cfg, "meters")
    gold = spark.table(built.table).toPandas()
    assert gold.groupby("split").size().to_dict() == {"test": 3, "train": 3 * (40 - c - 2 * p + 1)}

    test = gold[gold.split == "test"].set_index("series_id")
    first = 40 - c - p
    for k, meter in enumerate(sites):
        row = test.loc[meter]
        assert row.start_time.to_pydatetime() == hour(first)
        assert row.start == hour(first).date() and row.season == hour(first).hour
        assert list(row.static_idx) == [{"north": 1, "south": 2, None: 0}[sites[meter]]]
        expected = [[10.0 + i + k, float(i % 7 == 0)] for i in range(first, 40)]
        if meter == "M0":
            expected[30 - first][0] = np.nan
        np.testing.assert_array_equal(np.asarray(row.dynamic).reshape(-1, 2), expected)
    np.testing.assert_array_equal(np.asarray(test.loc["M0"].future).reshape(p, 2),
                                  [[100.0 + i, 1.0] for i in range(40, 40 + p)])
    assert test.loc["M2"].future is None                       # 3 of its 6 hours are known
    assert gold[gold.split == "train"].future.isna().all()

    again = build_features(spark, cfg, "meters")
    assert again.version == built.version                      # same silver, same declaration
    record = type("Record", (), {"name": "meters_deepar", "version": 1,
                                 "artifact": str(tmp_path)})()
    (tmp_path / "deepar.json").write_text(json.dumps({
        "n_series": 3, "prediction_length": p, "static_cardinalities": [2],
        "dynamic_mean": [0.0, 0.0], "dynamic_std": [1.0, 1.0]}))
    latest = spark.table(built.table).filter("split = 'test'")
    with pytest.raises(MissingCovariatesError, match=r"meters_deepar v1 forecasts 6 periods "
                                                     r"from 2 dynamic covariate\(s\); series M2 "
                                                     r"lack their values"):
        _check_inputs(latest, record, LakeFS())

    plain = {"meters": {**HOURLY["meters"], "roles": {"item_id": "meter", "timestamp": "hour",
                                                      "target": "load"}}}
    rebuilt = build_features(spark, with_datasets(cfg, plain), "meters")
    assert rebuilt.version > built.version                     # a changed declaration
    after = spark.table(rebuilt.table).toPandas()
    assert after.dynamic.map(len).eq(0).all() and after.static_idx.map(len).eq(0).all()
    with pytest.raises(MissingCovariatesError, match=r"takes 1 static covariate\(s\); the "
                                                     r"input's windows have none"):
        _check_inputs(spark.table(rebuilt.table).filter("split = 'test'"), record, LakeFS())


def test_patience_needs_validation():
    with pytest.raises(ConfigError, match="patience=2: stops on validation forecasts; give "
                                          "validation=true"):
        FAMILY.check_params({"patience": 2})
    assert FAMILY.check_params({"patience": 2, "validation": True})["patience"] == 2


def test_validation_holds_out_each_series_last_training_periods(spark, cfg, panel):
    """Validation takes each series' latest training window; training keeps only the
    windows that end before its prediction range."""
    from models.deepar.rank import _train_dataset
    from models.deepar.train import validation_windows

    c, p = WINDOW["context_length"], WINDOW["prediction_length"]
    df = spark.table(panel.table)
    gold = df.filter("split = 'train'").toPandas()
    held = validation_windows(df, p, len(LENGTHS), [], panel.table)
    latest = gold.loc[gold.groupby("series_idx").row_id.idxmax()].sort_values("series_idx")
    w = held["windows"]
    assert list(w["series_idx"]) == list(latest.series_idx) == list(range(len(LENGTHS)))
    assert np.array_equal(w["target"], np.stack(latest.target), equal_nan=True)
    assert list(held["last_train_row"]) == list(latest.row_id - p)

    limit = dict(zip(latest.series_idx, latest.row_id - p, strict=True))
    kept = gold[gold.row_id <= gold.series_idx.map(limit)]
    left_out = gold[gold.row_id > gold.series_idx.map(limit)]
    assert len(left_out) == len(LENGTHS) * p     # the latest window and the p - 1 before it

    def key(target) -> bytes:
        return np.nan_to_num(np.asarray(target, dtype=np.float32), nan=-1.0).tobytes()

    kept_keys, left_keys = set(kept.target.map(key)), set(left_out.target.map(key))
    files = snapshot_files(df)["train"]
    reader, ds = _train_dataset(LakeFS(), files, 16, 0, 1, 7, 1000,
                                {"context_length": c, "prediction_length": p},
                                held["last_train_row"])
    seen = set()
    try:
        batches = iter(ds)
        for _ in range(60):
            seen |= {key(t) for t in next(batches)[0].numpy()}
    finally:
        reader.stop()
        reader.join()
    assert seen <= kept_keys and not seen & left_keys and len(seen) > len(kept_keys) // 2
    with pytest.raises(ConfigError, match="leaves no training window"):
        validation_windows(df, 10_000, len(LENGTHS), [], panel.table)


def test_windows_without_covariates_feed_training_batches(spark, cfg, panel):
    """The batches a rank trains on, for a panel declaring no covariates (empty ones)."""
    from models.deepar.rank import _train_dataset

    c, p = WINDOW["context_length"], WINDOW["prediction_length"]
    files = snapshot_files(spark.table(panel.table))["train"]
    reader, ds = _train_dataset(LakeFS(), files, 8, 0, 1, 7, 1000,
                                {"context_length": c, "prediction_length": p})
    try:
        batches = iter(ds)
        for _ in range(20):
            target, season, idx, scale, static, dynamic = next(batches)
    finally:
        reader.stop()
        reader.join()
    assert target.shape == (8, c + p) and season.shape == idx.shape == scale.shape == (8,)
    assert static.shape == (8, 0) and dynamic.shape == (8, c + p, 0)
