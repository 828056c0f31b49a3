"""Training, evaluation and ONNX export of the models shipped with astromorph.

Run ``python -m astromorph_training <model> <step>``; see ``--help``.
"""
__all__: list[str] = []
