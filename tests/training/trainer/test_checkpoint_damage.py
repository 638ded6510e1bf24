"""A damaged checkpoint is "not a checkpoint", never torch's hint to unpickle it unsafely."""

from __future__ import annotations

import os

import pytest

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.trainer.checkpoint import load_checkpoint


@pytest.mark.parametrize("data", [os.urandom(4096), b"PK\x03\x04" + os.urandom(4096), b"step = 3\n"])
def test_damaged_checkpoint_is_one_clear_line(tmp_path, data):
    path = tmp_path / "checkpoint-last.pt"
    path.write_bytes(data)
    with pytest.raises(GeoSSLError) as err:
        load_checkpoint(str(path))
    message = str(err.value)
    assert "is not a checkpoint" in message and "\n" not in message
    assert "weights_only" not in message and "--trust" not in message
