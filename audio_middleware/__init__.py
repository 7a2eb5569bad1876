"""Serve only the audio of MP4 and FLV videos from any WSGI app.

::

    from audio_middleware import AudioOnlyMiddleware
    app.wsgi_app = AudioOnlyMiddleware(app.wsgi_app)
"""

from .errors import (
    AudioExtractionError,
    InvalidRequest,
    LimitExceeded,
    MalformedMedia,
    NoAudioTrack,
    RangeNotSatisfiable,
    SourceTruncated,
    UnsupportedMedia,
)
from .limits import Limits
from .middleware import AudioOnlyMiddleware

__version__ = "0.1.0"

__all__ = [
    "AudioExtractionError",
    "AudioOnlyMiddleware",
    "InvalidRequest",
    "LimitExceeded",
    "Limits",
    "MalformedMedia",
    "NoAudioTrack",
    "RangeNotSatisfiable",
    "SourceTruncated",
    "UnsupportedMedia",
    "__version__",
]
