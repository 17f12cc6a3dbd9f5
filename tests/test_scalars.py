"""Reading a run's TensorBoard scalars back (kudos.eval.scalars)."""

import numpy as np
import pytest

from kudos.errors import KudosError
from kudos.eval.scalars import read_scalars


def _write(directory, points, tag="episode/return"):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(directory / "tensorboard")) as writer:
        for step, value in points:
            writer.add_scalar(tag, value, step)


def test_reads_the_scalars_written(tmp_path):
    _write(tmp_path, [(0, 1.0), (100, 2.5), (200, -1.0)])
    series = read_scalars(tmp_path)["episode/return"]
    assert series.steps.tolist() == [0, 100, 200]
    np.testing.assert_allclose(series.values, [1.0, 2.5, -1.0])


def test_a_resumed_run_reads_as_one_curve_with_the_later_value_winning(tmp_path):
    import time

    _write(tmp_path, [(0, 1.0), (100, 2.0), (200, 3.0)])
    time.sleep(1.1)  # event file names carry the creation second
    _write(tmp_path, [(200, 30.0), (300, 40.0)])
    series = read_scalars(tmp_path, tags=["episode/return"])["episode/return"]
    assert series.steps.tolist() == [0, 100, 200, 300]
    np.testing.assert_allclose(series.values, [1.0, 2.0, 30.0, 40.0])


def test_a_directory_without_events_is_a_one_line_error(tmp_path):
    with pytest.raises(KudosError, match="no TensorBoard events"):
        read_scalars(tmp_path)
