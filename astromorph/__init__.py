"""astromorph: packaged ONNX models for astronomical images and tables.

Quick start::

    >>> import astromorph
    >>> astromorph.list_models()                       # doctest: +SKIP
    ['embedding', 'morphology', 'morphology-gz2', 'radio-morphology', 'real-bogus']
    >>> model = astromorph.load_model("morphology")    # doctest: +SKIP
    >>> model.predict(stamps)["probabilities"]          # doctest: +SKIP
"""
import importlib

from ._version import __version__

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
    "evaluate_labels",
    "LabelEvaluation",
]

#: The module of each public name imported on first use (`__getattr__`), so that
#: ``import astromorph`` imports neither numpy nor astropy (the ``astromorph`` console
#: script, `astromorph._console`, catches Ctrl-C while they are imported) and
#: ``astromorph --version`` no astropy.table, scipy's users or reader.
_LAZY = {
    "AstromorphError": ".exceptions", "AstromorphWarning": ".exceptions",
    "list_models": "._registry", "model_card": "._registry",
    "load_model": "._model", "Model": "._model", "Prediction": "._model",
    "annotate": "._annotate", "annotate_dask": "._dask", "annotate_stamps": "._stamp_table",
    "Flag": "._flags", "describe_flags": "._flags",
    "available_providers": "._session", "clear_session_cache": "._session",
    "predict_files": "._predict",
    "evaluate_labels": "._evaluate", "LabelEvaluation": "._evaluate",
    "SimilarityIndex": ".embeddings", "LabelHead": ".embeddings",
    "GaussianMixture": ".embeddings", "cluster_table": ".embeddings",
}


def __getattr__(name):
    if name == "exceptions":  # astromorph.exceptions.X after `import astromorph` alone
        return importlib.import_module(".exceptions", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once: later look-ups do not come here
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
