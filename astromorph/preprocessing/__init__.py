"""Numpy preprocessing shared by inference and by the training/ subproject.

Every shipped model is fed through exactly one function here, both when it is
trained (``training/`` imports these functions) and when astromorph runs it.
"""
