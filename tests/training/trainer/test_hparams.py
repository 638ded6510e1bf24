"""TensorBoard of a run: its settings once as hparams beside the final metrics, not as scalar curves."""

from __future__ import annotations

import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from geo_ssl.training.trainer.config import PretrainConfig
from geo_ssl.training.trainer.loop import pretrain
from geo_ssl.training.trainer.run_log import TENSORBOARD, read_metrics
from tests.shard_fixtures import make_tiny_shards


def _value(v) -> object:
    kind = v.WhichOneof("kind")
    return {"number_value": v.number_value, "string_value": v.string_value, "bool_value": v.bool_value}[kind]


def test_a_run_logs_its_settings_as_hparams_with_the_final_metrics(tmp_path) -> None:
    shards = tmp_path / "shards"
    make_tiny_shards(shards, n_locations=8, n_shards=1, split="train", image_size=40, n_clusters=3)
    run = tmp_path / "run"
    cfg = PretrainConfig(
        data=str(shards), out=str(run), arch="resnet18", method="moco", image_size=32, batch_size=4, moco_k=4,
        epochs=1, max_steps=2, num_workers=0, shuffle_buffer=4, n_clusters=3, knn_every=0, log_every=1,
        temperature=0.3,
    )  # fmt: skip
    pretrain(cfg)
    acc = EventAccumulator(str(run / TENSORBOARD), size_guidance={"scalars": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    data = {tag: plugin_data_pb2.HParamsPluginData.FromString(c) for tag, c in content.items()}
    start = data["_hparams_/session_start_info"].session_start_info
    hp = {name: _value(v) for name, v in start.hparams.items()}
    assert hp["batch_size"] == 4 and hp["arch"] == "resnet18" and hp["method"] == "moco"
    assert abs(hp["temperature"] - 0.3) < 1e-9 and hp["max_steps"] == 2
    assert set(hp) == set(cfg.as_dict())  # every setting, None and lists as text
    experiment = data["_hparams_/experiment"].experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert metric_tags == {"train/loss", "train/samples_per_s"}
    # the metrics the hparams point at are scalar curves whose last value is the run's final one
    last = read_metrics(str(run), "train")[-1]
    scalars = acc.Tags()["scalars"]
    assert metric_tags <= set(scalars)
    assert abs(acc.Scalars("train/loss")[-1].value - last["loss"]) < 1e-5
    # settings are not curves: 1/sqrt(dim) stays in metrics.jsonl only
    assert "q_std_ref" in last and "train/q_std_ref" not in scalars and "train/lr" in scalars
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2
