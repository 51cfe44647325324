"""The versions this package needs, checked when it is imported: an older
torch would fail only inside training, with an error that names nothing
useful."""

__all__ = ["MINIMUM_TORCH", "torch_release", "check_torch_version"]

MINIMUM_TORCH: tuple[int, int] = (2, 14)
"""The oldest torch the tests run on in CI (``.ci/run`` holds the two
equal). Older releases were tried: on 2.5.1, ``torch.compile`` of a masked
layer fails and timm's ViTs cannot be traced to find their classifier."""


def torch_release(version: str) -> tuple[int, int] | None:
    """The major and minor release of a torch version string
    (``"2.14.1+cu128"``: ``(2, 14)``); ``None`` for a development build."""
    try:
        major, minor = (int(part) for part in version.split("+")[0].split(".")[:2])
    except ValueError:
        return None
    return major, minor


def check_torch_version(version: str) -> None:
    """Refuse a torch older than :data:`MINIMUM_TORCH`.

    :param version: torch's version string, such as ``"2.14.1+cu128"``.
    :raises ImportError: naming the version found and how to upgrade.
    """
    found = torch_release(version)
    if found is not None and found < MINIMUM_TORCH:  # a development build: nothing to compare
        needed = ".".join(map(str, MINIMUM_TORCH))
        raise ImportError(
            f"piggyback-avalanche needs torch>={needed}, but torch {version} is installed. "
            f'Upgrade it: pip install "torch>={needed}"'
        )
