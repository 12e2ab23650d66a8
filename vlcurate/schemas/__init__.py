"""Arrow schemas of every record kind vlcurate writes, versioned, and their validation.

Each record kind is registered once as a :class:`RecordSchema` (name, version, Arrow
schema, which columns may carry extra source columns). Writers call :func:`validate`
before writing; ``vlcurate validate`` calls it again on what is on disk.
"""

from vlcurate.schemas.core import (
    SCHEMA_VERSION,
    RecordSchema,
    SchemaError,
    get_schema,
    register,
    registered,
    validate,
)
from vlcurate.schemas import records  # noqa: F401  (registers the built-in record kinds)
from vlcurate.schemas import features  # noqa: F401  (feature sidecars: vit_features)
from vlcurate.schemas import regions  # noqa: F401  (region_features sidecars)
from vlcurate.schemas import captions  # noqa: F401  (synthetic_captions, caption_scores)
from vlcurate.schemas import training  # noqa: F401  (training_sample: a training export's Parquet)
from vlcurate.schemas import evalsets  # noqa: F401  (eval_item, eval_match: decontamination)
from vlcurate.schemas import interleaved  # noqa: F401  (interleaved documents, pages, chunks)

__all__ = [
    "SCHEMA_VERSION",
    "RecordSchema",
    "SchemaError",
    "get_schema",
    "register",
    "registered",
    "validate",
]
