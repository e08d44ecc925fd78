"""The application layer, above both model packages: the command line, the end-to-end demo
(the main job) and the e-commerce catalogue generator that joins SynthMOSI clips to a click model.

It may import ``mmcore``, ``mmfusion`` and ``xdeepfm``; nothing imports it.
"""
