"""The built-in stages, registered by import. Stage modules import their heavy
dependencies (torch, model code) only inside ``setup``."""

from vlcurate.download import stage as _download  # noqa: F401
from vlcurate.filters import dedup as _dedup  # noqa: F401
from vlcurate.filters import text as _text  # noqa: F401
from vlcurate.extractors import vit_stage as _vit_stage  # noqa: F401
from vlcurate.filters import clip_score as _clip_score  # noqa: F401
from vlcurate.extractors import region_stage as _region_stage  # noqa: F401
from vlcurate.extractors import caption_stage as _caption_stage  # noqa: F401
from vlcurate.filters import caption_rank as _caption_rank  # noqa: F401
from vlcurate.filters import caption_itm as _caption_itm  # noqa: F401
from vlcurate.filters import near_dedup as _near_dedup  # noqa: F401
from vlcurate.filters import language as _language  # noqa: F401
from vlcurate.filters import basic as _basic  # noqa: F401
from vlcurate.filters import top_fraction as _top_fraction  # noqa: F401
from vlcurate.filters import semantic_dedup as _semantic_dedup  # noqa: F401
from vlcurate.filters import decontaminate as _decontaminate  # noqa: F401
from vlcurate.interleave import stage as _interleave  # noqa: F401
from vlcurate.interleave import boilerplate as _image_url_boilerplate  # noqa: F401
from vlcurate.interleave import chunks as _flamingo_chunks  # noqa: F401
from vlcurate.interleave import attach as _attach_images  # noqa: F401
