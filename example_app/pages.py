"""The demo's HTML page, shared by the Flask app and the Django project."""

from __future__ import annotations

from html import escape

PARAM = "ali_audio_only"
FLV_STARTS = (0, 2, 4, 6, 8)
MP4_CLIPS = ((0, 3), (2, 5), (5, 10), (7.5, None))


def _fmt(seconds: float) -> str:
    return f"{seconds:g}"


def audio_url(base: str, **query: float | None) -> str:
    """``base?ali_audio_only=1`` plus the given query parameters (None values left out)."""
    parts = [f"{PARAM}=1"] + [f"{name}={_fmt(value)}" for name, value in query.items() if value is not None]
    return f"{base}?{'&'.join(parts)}"


def index_html(media_prefix: str = "/media/", framework: str = "Flask", stream_prefix: str | None = None) -> str:
    """The index page: the video, its seekable audio-only rendition, FLV and clip links, and
    (with ``stream_prefix``) links to the same files served as streams without a length."""
    mp4 = f"{media_prefix}sample.mp4"
    flv = f"{media_prefix}sample.flv"
    stream_section = ""
    if stream_prefix is not None:
        stream_mp4, stream_flv = f"{stream_prefix}sample.mp4", f"{stream_prefix}sample.flv"
        stream_section = f"""
  <h2>From a stream with no Content-Length</h2>
  <p>The same files sent by a generator, as a live or proxied source would be. MP4 audio still gets an
     exact Content-Length (its plan is complete once <code>moov</code> is read); FLV audio is sent
     as it is found, so the server chunks it.</p>
  <ul id="stream-links">
      <li><a href="{escape(audio_url(stream_mp4))}">{escape(audio_url(stream_mp4))}</a></li>
      <li><a href="{escape(audio_url(stream_flv))}">{escape(audio_url(stream_flv))}</a></li>
  </ul>
"""
    flv_links = "\n".join(
        f'      <li><a class="flv-audio" href="{escape(audio_url(flv, start=s or None))}">'
        f"FLV audio from {_fmt(s)} s</a></li>"
        for s in FLV_STARTS
    )
    clip_links = "\n".join(
        f'      <li><a class="mp4-clip" href="{escape(audio_url(mp4, start=s or None, end=e))}">'
        f"MP4 audio {_fmt(s)} s to {_fmt(e) + ' s' if e is not None else 'the end'}</a></li>"
        for s, e in MP4_CLIPS
    )
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>audio_middleware demo ({escape(framework)})</title>
  <link rel="icon" href="data:,">
  <style>
    body {{ font-family: system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; padding: 0 1rem; }}
    video, audio {{ width: 100%; }}
    code {{ background: #f3f3f3; padding: 0 .2em; }}
  </style>
</head>
<body>
  <h1>audio_middleware demo</h1>
  <p>Served by {escape(framework)}, wrapped in <code>AudioOnlyMiddleware</code>.
     The same file, with <code>?{PARAM}=1</code>, comes back holding only its audio.</p>

  <h2>The video</h2>
  <video id="video" controls preload="metadata" src="{escape(mp4)}"></video>
  <p><a href="{escape(mp4)}">{escape(mp4)}</a></p>

  <h2>Audio only (MP4, seekable: Range requests get 206)</h2>
  <audio id="audio-only" controls preload="metadata" src="{escape(audio_url(mp4))}"></audio>
  <p><a id="audio-only-link" href="{escape(audio_url(mp4))}">{escape(audio_url(mp4))}</a></p>

  <h2>Audio only from an FLV, starting at a given time</h2>
  <p>Browsers do not play FLV: open these with VLC, ffplay or an FLV player
     (the original: <a href="{escape(flv)}">{escape(flv)}</a>).</p>
  <ul id="flv-links">
{flv_links}
  </ul>

  <h2>MP4 audio clips (<code>start</code> / <code>end</code> in seconds)</h2>
  <ul id="mp4-clips">
{clip_links}
  </ul>
{stream_section}</body>
</html>
"""
