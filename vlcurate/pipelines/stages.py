"""The built-in stages, registered by import. Stage modules import their heavy
dependencies (torch, model code) only inside ``setup``."""

from vlcurate.download import stage as _download  # noqa: F401
from vlcurate.filters import dedup as _dedup  # noqa: F401
from vlcurate.filters import text as _text  # noqa: F401
