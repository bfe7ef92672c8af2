"""The stack traps of pipelines.compat, each exercised for real."""
from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

import pipelines.registry  # noqa: F401  (applies the fixes)
from pipelines import compat
from pipelines.errors import UserError


def _message_hub_state():
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance("compat-test")
    for i in range(5):
        hub.update_scalar("train/loss", float(i) * 0.5)
    hub.update_info("iter", 5)
    hub.update_info("np_scalar", np.float64(1.5))
    return hub.state_dict()


def test_mmengine_checkpoint_state_loads_with_weights_only(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"message_hub": _message_hub_state(), "meta": {"seed": np.int64(3)},
                "state_dict": {"w": torch.ones(2)}}, path)
    # every global in it is allowlisted data: nothing torch would refuse
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
    loaded = torch.load(path, weights_only=True)  # torch's default since 2.6
    buf = loaded["message_hub"]["log_scalars"]["train/loss"]
    assert buf.mean() == pytest.approx(1.0)
    assert buf.current() == pytest.approx(2.0)
    assert loaded["meta"]["seed"] == 3


def test_history_buffer_pickles_without_functions():
    from mmengine.logging.history_buffer import HistoryBuffer

    data = pickle.dumps(HistoryBuffer([1.0, 2.0], [1, 1]), protocol=2)
    assert b"getattr" not in data
    restored = pickle.loads(data)
    assert restored.statistics("max") == 2.0  # the statistics table is rebuilt on load


def test_code_running_pickle_is_still_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_numpy1_checkpoint_names_are_accepted(tmp_path):
    """A checkpoint pickled under numpy 1 names numpy.core.multiarray; numpy 2 moved it."""
    src = io.BytesIO()
    torch.save({"arr": np.arange(4.0), "scalar": np.float32(2.5)}, src)
    out = tmp_path / "numpy1.pth"
    with zipfile.ZipFile(io.BytesIO(src.getvalue())) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(item, data)
    loaded = torch.load(out, weights_only=True)
    np.testing.assert_array_equal(loaded["arr"], np.arange(4.0))
    assert loaded["scalar"] == np.float32(2.5)


@pytest.mark.parametrize("name,version", [("mmcv", "2.2.0"), ("mmcv", "1.7.0"), ("mmdet", "2.28.0")])
def test_version_mismatch_is_one_clear_line(name, version):
    installed = {k: compat.installed_version(k) for k in compat.REQUIRED}
    installed[name] = version
    with pytest.raises(UserError) as err:
        compat.check_versions(installed)
    message = str(err.value)
    assert "\n" not in message and name in message and version in message


def test_installed_versions_pass():
    compat.check_versions()
