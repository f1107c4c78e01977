"""Data sources, one module each, behind one protocol (`descent.data.base`): in memory (`idx`, `synthetic`) or
streamed (`downsampled`, `folder`); served as optimizer steps and chunks by `descent.data.steps`."""

from descent.data.base import EVAL_SETS, ImageData, Images, Tensors
from descent.data.steps import Chunk, Chunks, Plan, set_chunks

__all__ = ["EVAL_SETS", "Chunk", "Chunks", "ImageData", "Images", "Plan", "Tensors", "set_chunks"]
