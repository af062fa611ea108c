"""plankton-db: label and search millions of plankton images with CNN embeddings in PostgreSQL."""

__version__ = "0.1.0"
