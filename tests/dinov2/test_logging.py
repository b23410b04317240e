import json
import statistics

import pytest

from pretrain.logging_utils import MetricLogger, SmoothedValue


def test_smoothed_value_window_median_and_global_avg():
    values = [5.0, 1.0, 4.0, 2.0, 8.0, 3.0]
    m = SmoothedValue(window_size=4)
    for v in values:
        m.update(v)
    assert m.median == statistics.median(values[-4:])
    assert m.global_avg == pytest.approx(sum(values) / len(values))
    assert m.value == 3.0 and m.max == 8.0
    m.update(10.0, n=3)  # weighted global average
    assert m.global_avg == pytest.approx((sum(values) + 30.0) / 9)


def test_log_every_console_jsonl_tensorboard(tmp_path):
    lines = []
    logger = MetricLogger(output_dir=str(tmp_path), tensorboard=True, log_fn=lines.append)
    seen = []
    for it, x in enumerate(logger.log_every(range(100), print_freq=3, header="Train", n_iterations=7,
                                            images_per_iter=16)):
        seen.append(x)
        logger.update(loss=float(x), lr=0.1)
    logger.close()
    assert seen == list(range(7))  # stops at n_iterations
    progress = [l for l in lines if l.startswith("Train [")]
    assert [l.split("]")[0] for l in progress] == ["Train [0/7", "Train [3/7", "Train [6/7"]
    assert "eta:" in progress[0] and "img/s:" in progress[0] and "mem:" in progress[0]
    assert "loss:" in progress[-1] and "data:" in progress[-1]
    assert len(lines) == 4 and "Total time" in lines[-1]
    assert "loss: 1.5000 (1.5000)" in progress[1]  # window median (global avg) of 0..3
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 3, 6]
    assert records[-1]["loss"] == statistics.median(range(7))
    assert {"iter_time", "data_time", "img_per_s", "max_mem_mb", "lr"} <= set(records[0])
    assert list((tmp_path / "tensorboard").iterdir())


def test_update_rejects_non_numbers():
    with pytest.raises(TypeError, match="loss"):
        MetricLogger().update(loss="x")
