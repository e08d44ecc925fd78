"""The shared core under both model packages; it imports nothing else of the project.

- :mod:`mmcore.config`: typed config dataclasses built from YAML (``base:`` files, ``--set`` overrides);
- :mod:`mmcore.files`: atomic writes and checksums;
- :mod:`mmcore.distributed`: the torchrun context, device selection and collectives;
- :mod:`mmcore.checkpoint`: the training checkpoint format (safetensors + JSON, checksummed);
- :mod:`mmcore.loop`: the loop vocabulary both trainers share (run directory, early stopping, seeds);
- :mod:`mmcore.artifact`: exported artifact directories with manifests and checksums;
- :mod:`mmcore.runtime`: logging and the offline policy;
- :mod:`mmcore.hf`: the one local-only Hugging Face loading helper.
"""
