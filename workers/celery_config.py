"""Loading the project's ``celeryconfig.py``, and only that one.

``app.config_from_object("celeryconfig")`` imports whatever module of that name comes first on
``sys.path``. A producer service that has a ``celeryconfig.py`` of its own (a common name) would
then silently give this app *its* settings: a different broker, no late acks, pickle. So the
project's file is loaded from where it is installed, next to the ``workers`` package (the same in
a source checkout, an editable install and a wheel), under a module name of its own; whatever
else is importable as ``celeryconfig`` is never read.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from runner_core.errors import ConfigurationError

__all__ = ["CONFIG_MODULE", "celeryconfig_path", "load_celeryconfig"]

#: The name the project's ``celeryconfig.py`` is registered under in ``sys.modules``.
CONFIG_MODULE = "agent_runner_celeryconfig"


def celeryconfig_path() -> Path:
    """Where the project's ``celeryconfig.py`` is: beside the ``workers`` package."""
    return Path(__file__).resolve().parent.parent / "celeryconfig.py"


def load_celeryconfig() -> ModuleType:
    """The project's Celery settings module, loaded once per process.

    Raises:
        ConfigurationError: the file is missing (a broken install), or an ``AGENT_RUNNER_*``
            value is bad; the message names the variable and the fix.
    """
    loaded = sys.modules.get(CONFIG_MODULE)
    if loaded is not None:
        return loaded
    path = celeryconfig_path()
    spec = importlib.util.spec_from_file_location(CONFIG_MODULE, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ConfigurationError(
            f"agent-runner's Celery settings are missing: {path} does not exist. Reinstall the "
            "package (pip install agent-runner, or pip install -e . in a checkout)."
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[CONFIG_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[CONFIG_MODULE]  # a later call reports the same error, not half a module
        raise
    return module
