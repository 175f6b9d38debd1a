"""ImageBind embeddings for Weaviate: model, preprocessing, serving."""

__version__ = "0.1.0"
