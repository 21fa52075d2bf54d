import pytest
import torch

from napari_segsuite.core.device import available_devices, resolve_device
from napari_segsuite.core.errors import DeviceError


def test_auto_prefers_cuda_then_mps_then_cpu():
    devices = available_devices()
    assert devices[-1] == "cpu"
    assert resolve_device("auto") == devices[0]
    assert resolve_device(None) == devices[0]
    assert ("cuda" in devices) == torch.cuda.is_available()


def test_cpu_always_and_unknown_devices_refused():
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(DeviceError, match="Unknown device"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_a_clear_error():
    with pytest.raises(DeviceError, match="not available on this machine"):
        resolve_device("cuda")
