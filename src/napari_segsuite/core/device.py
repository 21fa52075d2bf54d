"""Choosing the compute device: automatic (CUDA, then Apple MPS, then CPU) or by name."""

from __future__ import annotations

from napari_segsuite.core.errors import DeviceError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def available_devices() -> list[str]:
    """Return the devices torch can use on this machine, best first (imports torch)."""
    import torch

    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def resolve_device(device: str | None = "auto") -> str:
    """Turn a device request into a torch device string.

    Parameters
    ----------
    device : str or None
        ``"auto"`` (or None) picks CUDA, then MPS, then CPU. ``"cpu"``, ``"cuda"``,
        ``"cuda:1"`` and ``"mps"`` are checked for availability.

    Returns
    -------
    str
        A device string torch accepts.

    Raises
    ------
    DeviceError
        When the requested device is not available here.
    """
    if device is None or str(device).lower() == "auto":
        return available_devices()[0]
    name = str(device).lower()
    kind = name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise DeviceError(f"Unknown device {device!r}: choose one of {', '.join(DEVICE_CHOICES)}.")
    if kind != "cpu" and kind not in available_devices():
        raise DeviceError(
            f"Device {device!r} is not available on this machine "
            f"(available: {', '.join(available_devices())}). Choose 'auto' or 'cpu'."
        )
    if kind == "cuda" and ":" in name:
        import torch

        index = int(name.split(":")[1])
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"Device {device!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)."
            )
    return name
