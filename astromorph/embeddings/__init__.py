"""Tools for embedding vectors (the ``embedding`` column of the ``embedding`` model).

* `SimilarityIndex`: exact (numpy) or approximate nearest-neighbour search by
  cosine similarity, queried by row, sky position, image or vector, with
  `SimilarityIndex.gallery` pictures of the results;
* `LabelHead`: a few-label classifier (logistic regression) applied to a whole table;
* `GaussianMixture` and `cluster_table`: Gaussian-mixture clusters in embedding
  space (number of clusters by BIC); `embedding_map` and `plot_map` for 2-d maps.

Everything needs numpy and scipy only; matplotlib is imported only to draw,
faiss or hnswlib only when asked for (or found, with ``backend="auto"``).
"""
from ._head import LabelHead
from ._index import BACKENDS, SimilarityIndex
from ._mixture import GaussianMixture, cluster_table
from ._plots import display_image, embedding_map, plot_map

__all__ = ["SimilarityIndex", "BACKENDS", "LabelHead", "GaussianMixture", "cluster_table",
           "embedding_map", "plot_map", "display_image"]
