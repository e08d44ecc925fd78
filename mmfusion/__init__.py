"""mmfusion: the linguistic-guided multimodal sentiment model (the source paper's sections II-III,
docs/references.md): its data (MMSA pickles, SynthMOSI, extraction from video files), model,
training loop, evaluation and export. Built on ``mmcore``; it never imports ``xdeepfm`` or ``mmapp``."""

__version__ = "0.1.0"
