"""mmfusion: linguistic-guided multimodal sentiment model (seed 002, sections II-III)."""

__version__ = "0.1.0"
