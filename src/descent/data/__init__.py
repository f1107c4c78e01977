"""Data sources, one module each, behind one protocol (`descent.data.base`): in memory (`idx`, `synthetic`) or
streamed (`downsampled`, `folder`)."""

from descent.data.base import EVAL_SETS, Chunk, Chunks, ImageData, Images, Plan, Tensors, set_chunks

__all__ = ["EVAL_SETS", "Chunk", "Chunks", "ImageData", "Images", "Plan", "Tensors", "set_chunks"]
