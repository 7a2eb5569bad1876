"""Every real third-party file in ../shared/media through the middleware.

Files that are fine must come back with audio packets identical to the
source's (PyAV oracle); broken ones must get the documented HTTP error before
any body byte. Skips when the corpus folder is absent.
"""

from __future__ import annotations

import pytest
from webtest import TestApp

from audio_middleware import AudioOnlyMiddleware

from .apps import FileApp, GeneratorApp
from .conftest import SHARED_MEDIA, media_toolkit

#: Files that must be refused, with the status and a word of the reason.
REFUSED = {
    "bad_exo_audio_missing_stsd.mp4": (502, "stsd"),
    "bad_exo_free_box_size3.mp4": (502, "smaller than its header"),
    "bad_exo_truncated_after_moov.m4b": (502, "past the end"),
    "bad_lofty_fuzz_oom_23bytes.mp4": (502, "not a valid MP4"),
    "bad_lofty_fuzz_truncated_moov.m4a": (502, "moov"),
    "bad_mp4ff_gofuzz_bare_co64.mp4": (502, "not a valid MP4"),
    "bad_mp4ff_init_truncated.mp4": (502, "moov"),
    "bad_mp4parse_clusterfuzz_minimized.mp4": (502, "moov"),
    "bad_mp4parse_duplicate_ftyp_moov_no_mdat.mp4": (502, "past the end"),
    "bad_mutagen_64bit_nested_boxes_no_tracks.mp4": (502, "mvhd"),
    "bad_mutagen_truncated_co64_largesize.mp4": (502, "past the end"),
    "bad_taglib_infloop.m4a": (502, "overlap"),
    "bad_mp4ff_gofuzz_mutated_fmp4.mp4": (502, ""),
    "gomp4_qt_double_ftyp_moov_only.mp4": (502, "past the end"),
    "hachoir_pentax_mjpeg_pcm_no_ftyp_no_mdat.mov": (502, "past the end"),
    "musicmetadata_aac_h264_ac3_c608_header_only.mp4": (502, "past the end"),
    "mp4ff_dash_aac_seg1.m4s": (502, "moov"),
    "exo_h264_video_only.mp4": (404, "audio"),
    "mp4parser_f4v_h264_amf0_fragmented_largesize_co64.f4v": (404, "audio"),
    "exo_h264_video_only_keyframe_index.flv": (404, "audio"),
    "hachoir_h263_mp3_truncated.flv": (502, ""),
}
#: Source files PyAV itself cannot demux: we only check that our output is stable.
PYAV_CANNOT_READ = {"bad_lofty_fuzz_corrupt_header.m4a"}
CONTENT_TYPES = {".flv": "video/x-flv", ".mov": "video/quicktime", ".3gp": "video/3gpp", ".3g2": "video/3gpp2",
                 ".m4a": "audio/mp4", ".m4b": "audio/mp4", ".f4v": "video/mp4", ".m4s": "video/iso.segment"}

FILES = sorted(p.name for p in SHARED_MEDIA.glob("*") if p.suffix != ".md") if SHARED_MEDIA.is_dir() else []


@pytest.mark.parametrize("name", FILES or ["(corpus absent)"])
def test_real_file_over_file_backed_source(shared_media, name):
    path = shared_media / name
    client = TestApp(AudioOnlyMiddleware(FileApp(path, CONTENT_TYPES.get(path.suffix, "video/mp4"))))
    response = client.get("/m?ali_audio_only=1", status="*")
    check(path, response)


@pytest.mark.parametrize("name", FILES or ["(corpus absent)"])
def test_real_file_over_forward_only_source(shared_media, name):
    path = shared_media / name
    upstream = GeneratorApp(path, CONTENT_TYPES.get(path.suffix, "video/mp4"), chunks=(4093, 1, 65536))
    client = TestApp(AudioOnlyMiddleware(upstream))
    try:
        response = client.get("/m?ali_audio_only=1", status="*")
    except Exception as error:  # a truncated FLV is only found mid-stream on a forward-only source
        assert name in REFUSED and type(error).__module__.startswith("audio_middleware"), error
        return
    check(path, response)
    assert upstream.closes == upstream.bodies


def check(path, response):
    if path.name in REFUSED:
        status, word = REFUSED[path.name]
        assert response.status_int == status, response.text[:200]
        assert response.content_type == "text/plain"
        assert word in response.text
        return
    assert response.status_int == 200, response.text[:300]
    assert response.content_type in ("audio/mp4", "audio/3gpp", "audio/3gpp2", "video/x-flv")
    if path.name in PYAV_CANNOT_READ:
        again = TestApp(AudioOnlyMiddleware(GeneratorApp(path))).get("/m?ali_audio_only=1")
        assert again.body == response.body
        return
    media_toolkit.assert_audio_identical(path, response.body)
