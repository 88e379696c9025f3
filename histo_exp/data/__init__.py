"""Data stages: synthetic generation, indexing, decoding, patient split, batches."""
