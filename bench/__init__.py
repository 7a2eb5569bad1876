"""Benchmark of audio_middleware against serving the whole video, a plain audio file and ffmpeg.

``python -m bench`` (full run, inputs generated once and cached) or ``python -m bench --quick``.
"""
