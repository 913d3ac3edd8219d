"""Audio helpers: ``formats`` (no numpy: rates, durations, WAV writing, container sniffing), ``codecs`` (PCM16,
μ-law, WAV reading, resampling, framing), ``enhance`` and ``vad``. Nothing is imported here, so the numpy-free
part stays numpy-free."""
