"""Data layer: MMSA pickles, the SynthMOSI generator, batching."""
