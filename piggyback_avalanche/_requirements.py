"""The versions this package needs, checked when it is imported: an older
torch would fail only inside training, with an error that names nothing
useful."""

__all__ = ["MINIMUM_TORCH", "check_torch_version"]

MINIMUM_TORCH: tuple[int, int] = (2, 5)
"""``torch.OutOfMemoryError`` arrived in 2.5, fused Adam on the CPU in 2.4."""


def check_torch_version(version: str) -> None:
    """Refuse a torch older than :data:`MINIMUM_TORCH`.

    :param version: torch's version string, such as ``"2.5.1+cu121"``.
    :raises ImportError: naming the version found and how to upgrade.
    """
    try:
        found = tuple(int(part) for part in version.split("+")[0].split(".")[:2])
    except ValueError:
        return  # a development build: nothing to compare
    if found < MINIMUM_TORCH:
        needed = ".".join(map(str, MINIMUM_TORCH))
        raise ImportError(
            f"piggyback-avalanche needs torch>={needed}, but torch {version} is installed. "
            f'Upgrade it: pip install "torch>={needed}"'
        )
