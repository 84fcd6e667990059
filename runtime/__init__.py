"""Fast scoring of conversations with a distilled RBR bundle: ONNX Runtime, tokenizers, numpy.

This package never imports torch or transformers, so a trainer can embed it next to its
own torch and a CPU reward server stays small. Trainer adapters live in
`runtime.adapters`, the OpenRLHF reward server in `runtime.server`, Ray Data scoring in
`runtime.ray_data` and the Triton model repository export in `runtime.triton`.
"""

from runtime.scorer import PreparedBatch, Scorer, ScoreResult

__all__ = ["PreparedBatch", "ScoreResult", "Scorer"]
