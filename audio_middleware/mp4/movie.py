"""The ``moov`` box: its tracks, and a copy of it that keeps only some of them.

Rewriting never touches the sample tables of a kept track except its chunk
offsets, so every kept sample keeps its bytes, timestamps, edit list and codec
configuration exactly.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import LimitExceeded, MalformedMedia, NoAudioTrack, UnsupportedMedia, echo
from ..limits import Limits
from .boxes import (
    MAX_U32,
    Box,
    build_box,
    check_box_count,
    full_box_version,
    iter_children,
    parse_header,
    rebuild_parts,
)
from .tracks import Track, parse_track

U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
OFFSET_BOX_HEAD = struct.Struct(">I4sII")  # size, type, version/flags, entry_count


@dataclass
class Movie:
    """A parsed ``moov``: ``data`` holds the box itself, starting at offset 0."""

    data: bytes
    moov: Box
    mvhd: Box
    tracks: list[Track]
    mvex: Box | None

    @property
    def fragmented(self) -> bool:
        return self.mvex is not None

    @property
    def timescale(self) -> int:
        at = self.mvhd.payload_offset + 4 + (16 if self.data[self.mvhd.payload_offset] == 1 else 8)
        return U32.unpack_from(self.data, at)[0]


def parse_movie(data: bytes, limits: Limits) -> Movie:
    """Parse the ``moov`` box held in ``data`` (which starts with its header)."""
    moov = parse_header(data, 0, len(data))
    check_box_count(data, moov, limits.max_moov_boxes, limits.max_box_depth)
    mvhd: Box | None = None
    mvex: Box | None = None
    tracks: list[Track] = []
    for child in iter_children(data, moov.payload_offset, moov.end):
        if child.type == b"cmov":
            raise UnsupportedMedia("compressed QuickTime movie header (cmov) is not supported")
        if child.type == b"mvhd":
            if mvhd is not None:
                raise _duplicate("mvhd")
            mvhd = child
        elif child.type == b"mvex":
            if mvex is not None:
                raise _duplicate("mvex")
            mvex = child
        elif child.type == b"trak":
            if len(tracks) >= limits.max_tracks:
                raise LimitExceeded(f"more than {limits.max_tracks} tracks")
            tracks.append(parse_track(data, child, limits))
    if mvhd is None:
        raise MalformedMedia("moov has no mvhd")
    _check_mvhd(data, mvhd)
    ids = [track.track_id for track in tracks]
    if len(set(ids)) != len(ids):
        raise MalformedMedia("two tracks share a track_ID")
    return Movie(data, moov, mvhd, tracks, mvex)


def _duplicate(kind: str) -> Exception:
    return MalformedMedia(f"moov holds two '{kind}' boxes")


def _check_mvhd(data: bytes, mvhd: Box) -> None:
    version = full_box_version(data, mvhd)
    if mvhd.payload_size < (112 if version == 1 else 100):
        raise MalformedMedia("mvhd is too short")


def select_audio(movie: Movie, selector: str | None) -> list[Track]:
    """The audio tracks to keep: all, or one by 1-based index or ISO-639-2 language."""
    audio = [track for track in movie.tracks if track.is_audio]
    if not audio:
        raise NoAudioTrack("the media has no audio track")
    if selector is None or selector == "":
        return audio
    if selector.isascii() and selector.isdigit():  # not str.isdigit alone: '²' is a digit to it
        index = int(selector)
        if 1 <= index <= len(audio):
            return [audio[index - 1]]
        raise NoAudioTrack(f"no audio track {echo(selector)} (the media has {len(audio)})")
    wanted = selector.lower()
    chosen = [track for track in audio if track.language == wanted]
    if not chosen:
        langs = ", ".join(sorted({track.language for track in audio}))
        raise NoAudioTrack(f"no audio track in language {echo(selector)} (available: {langs})")
    return chosen[:1]


def offsets_box(values: np.ndarray | array | list[int], wide: bool) -> bytearray:
    """A ``stco`` (32-bit) or ``co64`` (64-bit) box holding ``values``, written in place (no temporaries)."""
    count = len(values)
    box = bytearray(OFFSET_BOX_HEAD.size + count * (8 if wide else 4))
    OFFSET_BOX_HEAD.pack_into(box, 0, len(box), b"co64" if wide else b"stco", 0, count)
    if count:
        np.frombuffer(box, ">u8" if wide else ">u4", count, OFFSET_BOX_HEAD.size)[:] = values
    return box


class SizedPlaceholder:
    """Stands for a box of known length in :func:`movie_edits`, to size a moov without building it."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


def movie_edits(movie: Movie, kept: list[Track], new_offsets: Mapping[int, bytes | bytearray | SizedPlaceholder],
                extra_edits: dict[int, bytes | None] | None) -> dict[int, bytes | None]:
    """The box edits that keep only ``kept`` tracks, with their chunk offset boxes replaced by ``new_offsets``."""
    data = movie.data
    kept_ids = {track.track_id for track in kept}
    edits: dict[int, bytes | None] = dict(extra_edits or {})
    for track in movie.tracks:
        if track.track_id not in kept_ids:
            edits[track.box.offset] = None
            continue
        if track.offsets_box is not None and track.track_id in new_offsets:
            edits[track.offsets_box.offset] = new_offsets[track.track_id]  # type: ignore[assignment]
        edits.update(tref_edits(data, track.box, kept_ids))
    if movie.mvex is not None:
        for child in iter_children(data, movie.mvex.payload_offset, movie.mvex.end):
            if child.type == b"trex" and child.payload_size >= 8:
                if U32.unpack_from(data, child.payload_offset + 4)[0] not in kept_ids:
                    edits[child.offset] = None
    edits[movie.mvhd.offset] = _new_mvhd(movie, kept)
    return edits


def rewritten_size(movie: Movie, kept: list[Track], wide: bool, limits: Limits) -> int:
    """Size of the moov :func:`movie_edits` describe (offsets' values do not change it): nothing is built."""
    width = 8 if wide else 4
    placeholders = {track.track_id: SizedPlaceholder(OFFSET_BOX_HEAD.size + width * len(track.chunk_offsets))
                    for track in kept}
    edits = movie_edits(movie, kept, placeholders, None)
    return rebuild_parts(movie.data, movie.moov, edits, max_depth=limits.max_box_depth)[0]


def tref_edits(data: bytes, trak: Box, kept_ids: set[int]) -> dict[int, bytes | None]:
    """Drop references to removed tracks (e.g. an audio track's 'chap' to a text track)."""
    edits: dict[int, bytes | None] = {}
    for child in iter_children(data, trak.payload_offset, trak.end):
        if child.type != b"tref":
            continue
        for ref in iter_children(data, child.payload_offset, child.end):
            count = ref.payload_size // 4
            ids = struct.unpack_from(f">{count}I", data, ref.payload_offset)
            keep = [track_id for track_id in ids if track_id in kept_ids]
            if len(keep) != len(ids):
                edits[ref.offset] = build_box(ref.type, struct.pack(f">{len(keep)}I", *keep)) if keep else None
    return edits


def _new_mvhd(movie: Movie, kept: list[Track]) -> bytes:
    """mvhd with the duration of the longest kept track and a fitting next_track_ID."""
    data, mvhd = movie.data, movie.mvhd
    body = bytearray(data[mvhd.payload_offset:mvhd.end])
    version = body[0]
    durations = [track.tkhd_duration for track in kept
                 if track.tkhd_duration not in (0, MAX_U32, 0xFFFFFFFFFFFFFFFF)]
    if durations:
        if version == 1:
            U64.pack_into(body, 4 + 16 + 4, max(durations))
        else:
            U32.pack_into(body, 4 + 8 + 4, min(max(durations), MAX_U32))
    next_id_at = (112 if version == 1 else 100) - 4
    # 0xFFFFFFFF (all ones) tells readers to search for a free ID: right when the largest ID is taken.
    U32.pack_into(body, next_id_at, min(max(track.track_id for track in kept) + 1, MAX_U32))
    return build_box(b"mvhd", bytes(body))
