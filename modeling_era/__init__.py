"""ERA adapters: a strong query encoder searching an index built with a light doc encoder."""
from .configuration_era import EraConfig
from .modeling_era import (
    EraAdapter,
    EraQueryEncoder,
    IncompatibleDocEncoderError,
    encode_texts,
    format_prompt,
    pool,
)

__all__ = [
    "EraAdapter",
    "EraConfig",
    "EraQueryEncoder",
    "IncompatibleDocEncoderError",
    "encode_texts",
    "format_prompt",
    "pool",
]
