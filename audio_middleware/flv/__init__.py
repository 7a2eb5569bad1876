"""FLV: audio-only rendition of an FLV file as a plan (see :mod:`.planner`)."""

from .planner import CONTENT_TYPE, plan_flv, rewrite_metadata

__all__ = ["CONTENT_TYPE", "plan_flv", "rewrite_metadata"]
