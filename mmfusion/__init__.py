"""mmfusion: the linguistic-guided multimodal sentiment model (the source paper's sections II-III,
docs/references.md): its data (MMSA pickles, SynthMOSI, extraction from video files), model,
training loop, evaluation and export. Built on ``mmcore``; it never imports ``xdeepfm`` or ``mmapp``.

The Python API: ``SentimentModel.from_pretrained(path)`` then ``.predict(arrays)``,
``.predict_file(pickle)``, ``.predict_video(file, text=...)``, ``.save_pretrained(out)``
(``mmfusion/pretrained.py``); training: ``mmfusion.train.train(load_experiment(yaml), out_dir)``.
"""

from mmfusion.pretrained import SentimentModel

__all__ = ["SentimentModel"]
__version__ = "0.1.0"
