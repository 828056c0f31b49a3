"""astromorph: packaged ONNX models for astronomical images and tables.

Quick start::

    >>> import astromorph
    >>> astromorph.list_models()                       # doctest: +SKIP
    ['embedding', 'morphology', 'morphology-gz2', 'radio-morphology', 'real-bogus']
    >>> model = astromorph.load_model("morphology")    # doctest: +SKIP
    >>> model.predict(stamps)["probabilities"]          # doctest: +SKIP
"""
from ._version import __version__
from ._registry import list_models, model_card
from ._model import Model, Prediction, load_model
from ._flags import Flag, describe_flags
from ._annotate import annotate
from ._dask import annotate_dask
from ._session import available_providers, clear_session_cache
from .exceptions import AstromorphError, AstromorphWarning
from ._predict import predict_files
from ._stamp_table import annotate_stamps
from .embeddings import GaussianMixture, LabelHead, SimilarityIndex, cluster_table

__all__ = [
    "__version__",
    "list_models",
    "model_card",
    "load_model",
    "Model",
    "Prediction",
    "annotate",
    "annotate_dask",
    "annotate_stamps",
    "Flag",
    "describe_flags",
    "available_providers",
    "clear_session_cache",
    "AstromorphError",
    "AstromorphWarning",
    "predict_files",
    "SimilarityIndex",
    "LabelHead",
    "GaussianMixture",
    "cluster_table",
]
