"""Jams: loops layered into one mix, with an optional sidechain duck and stems. Imports neither torch nor discord.

    result = mix_layers([read_layer(Path("drums.wav")), read_layer(Path("bass.wav"), gain_db=-3)], LoopShape(92, 4))
    result.audio     # [2, N] float32, N = shape.samples(result.sample_rate), exactly
    write_stems(result, Path("stems"), "wav", ceiling_db=-1.0)   # 01-drums.wav, 02-bass.wav, jam.json
    write_stems_zip(result, Path("mix.zip"), "wav", ceiling_db=-1.0)   # the same, as one zip
    result.report()  # the mix as a loop report: loudness_lufs, verdict, source_key, target_key...
"""

from .mix import Layer, LayerOrigin, MixedLayer, MixResult, is_exact, mix_layers, read_layer
from .stems import MANIFEST, Stem, jam_manifest, stems, write_stems, write_stems_zip

__all__ = [
    "MANIFEST", "Layer", "LayerOrigin", "MixResult", "MixedLayer", "Stem", "is_exact", "jam_manifest", "mix_layers",
    "read_layer", "stems", "write_stems", "write_stems_zip",
]
